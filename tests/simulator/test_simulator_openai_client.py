"""The official `openai` client talks to the running simulator as it would to GMI Cloud."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from worker.simulator import SimulatorServer

MODEL = "moonshotai/Kimi-K2.5"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url, api_key=sim.config.api_key, max_retries=0) as made:
        yield made


def test_chat_completion_round_trips_through_the_sdk(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}]
    )

    assert completion.choices[0].message.content == "Simulated answer to: Say hi"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_tool_call_arguments_parse_as_json(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )

    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Weather in Oslo", "days": 42}


def test_chat_stream_with_usage_through_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )

    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Simulated answer to: Stream me"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_responses_create_through_the_sdk(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Summarise the news", instructions="Brief"
    )

    assert response.output_text == "Simulated answer to: Summarise the news"
    assert response.status == "completed"
    assert response.instructions == "Brief"
    assert response.usage is not None


def test_responses_stream_through_the_sdk(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Stream please", stream=True))

    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Simulated answer to: Stream please"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Simulated answer to: Stream please"


def test_scripted_429_raises_rate_limit_error_with_retry_after(
    sim: SimulatorServer, client: openai.OpenAI
) -> None:
    sim.script([{"status": 429, "retry_after": "7"}])

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


def test_sdk_retry_after_a_429_is_logged_as_a_second_request(sim: SimulatorServer) -> None:
    sim.script([{"status": 429, "retry_after": "0"}])
    retrying = openai.OpenAI(base_url=sim.base_url, api_key=sim.config.api_key, max_retries=1)

    with retrying:
        completion = retrying.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}]
        )

    assert completion.choices[0].message.content == "Simulated answer to: again"
    retry_counts = [entry["headers"].get("x-stainless-retry-count") for entry in sim.requests()]
    assert retry_counts == ["0", "1"]


def test_wrong_key_raises_authentication_error(sim: SimulatorServer) -> None:
    wrong = openai.OpenAI(base_url=sim.base_url, api_key="not-the-key", max_retries=0)

    with wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()

    assert caught.value.status_code == 401


def test_models_list_and_retrieve_through_the_sdk(client: openai.OpenAI) -> None:
    listed = [model.id for model in client.models.list()]

    assert listed == ["openai/gpt-5.4-mini"]
    assert client.models.retrieve("openai/gpt-5.4-mini").owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("acme/none")
