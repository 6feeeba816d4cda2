"""Every body the simulator sends validates with the openai types and the OpenAI spec schemas.

Bodies are read raw off the wire (httpx2), so nothing is filled in by a client library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject
from pydantic import TypeAdapter

from worker.simulator import SimulatorServer

MODEL = "deepseek-ai/DeepSeek-V3.2"
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}
CLOCK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}, "precise": {"type": "boolean"}},
        },
    },
}
QUESTION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the weather in Paris today?"},
]
PARTS_QUESTION = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe this picture."},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ],
    }
]
CHAT_SCENARIOS: dict[str, dict[str, Any]] = {
    "plain_text": {"model": MODEL, "messages": QUESTION},
    "content_parts": {"model": MODEL, "messages": PARTS_QUESTION},
    "one_tool": {"model": MODEL, "messages": QUESTION, "tools": [WEATHER]},
    "parallel_tools": {"model": MODEL, "messages": QUESTION, "tools": [WEATHER, CLOCK]},
    "two_choices": {"model": MODEL, "messages": QUESTION, "n": 2},
    "reasoning_effort": {"model": MODEL, "messages": QUESTION, "reasoning_effort": "high"},
    "length_cap": {"model": MODEL, "messages": QUESTION, "max_completion_tokens": 3},
    "json_object": {
        "model": MODEL,
        "messages": QUESTION,
        "response_format": {"type": "json_object"},
    },
}
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}
FLAT_CLOCK = {"type": "function", **CLOCK["function"]}
RESPONSES_SCENARIOS: dict[str, dict[str, Any]] = {
    "plain_text": {"model": MODEL, "input": "What is the weather in Paris today?"},
    "input_items": {
        "model": MODEL,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hello there."}]},
            {"type": "message", "role": "assistant", "content": "Hi."},
            {"role": "user", "content": "What is the weather in Paris today?"},
        ],
        "metadata": {"job": "42"},
    },
    "function_tools": {"model": MODEL, "input": "Weather?", "tools": [FLAT_WEATHER, FLAT_CLOCK]},
    "tool_output_returned": {
        "model": MODEL,
        "tools": [FLAT_WEATHER],
        "input": [
            {"role": "user", "content": "Weather?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    },
    "reasoning": {
        "model": MODEL,
        "input": "Why?",
        "reasoning": {"effort": "low", "summary": "auto"},
    },
    "output_cap": {"model": MODEL, "input": "What is the weather?", "max_output_tokens": 2},
}


Validate = Callable[[str, object], None]


def auth(server: SimulatorServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.config.api_key}"}


def post(server: SimulatorServer, path: str, body: object) -> httpx2.Response:
    return httpx2.post(server.base_url + path, json=body, headers=auth(server), timeout=10)


def sse_frames(raw: bytes) -> list[bytes]:
    return [frame for frame in raw.split(b"\n\n") if frame.strip()]


def chat_chunks(raw: bytes) -> list[dict[str, Any]]:
    frames = sse_frames(raw)
    assert frames[-1] == b"data: [DONE]"
    return [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-1]]


def response_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in sse_frames(raw):
        event_line, data_line = frame.split(b"\n")
        event = json.loads(data_line.removeprefix(b"data: "))
        assert event_line == b"event: " + event["type"].encode()
        events.append(event)
    return events


@pytest.mark.parametrize("scenario", sorted(CHAT_SCENARIOS))
def test_chat_completion_matches_openai_types_and_spec(
    sim: SimulatorServer, validate_spec: Validate, scenario: str
) -> None:
    response = post(sim, "chat/completions", CHAT_SCENARIOS[scenario])

    assert response.status_code == 200
    body = response.json()
    ChatCompletion.model_validate(body)
    validate_spec("CreateChatCompletionResponse", body)
    for choice in body["choices"]:
        assert set(choice) >= {"index", "message", "logprobs", "finish_reason"}
        assert set(choice["message"]) >= {"role", "content", "refusal"}
    details = body["usage"]
    assert "cached_tokens" in details["prompt_tokens_details"]
    assert "reasoning_tokens" in details["completion_tokens_details"]


def test_chat_scenarios_answer_as_their_requests_ask(sim: SimulatorServer) -> None:
    bodies = {
        name: post(sim, "chat/completions", req).json() for name, req in CHAT_SCENARIOS.items()
    }

    plain = bodies["plain_text"]["choices"][0]
    assert plain["finish_reason"] == "stop"
    assert plain["message"]["content"] == "Simulated answer to: What is the weather in Paris today?"
    assert bodies["content_parts"]["choices"][0]["message"]["content"] == (
        "Simulated answer to: Describe this picture."
    )
    one = bodies["one_tool"]["choices"][0]
    assert one["finish_reason"] == "tool_calls"
    assert one["message"]["content"] is None
    assert [c["function"]["name"] for c in one["message"]["tool_calls"]] == ["get_weather"]
    parallel = bodies["parallel_tools"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in parallel] == ["get_weather", "get_time"]
    assert len({c["id"] for c in parallel}) == 2
    assert [c["index"] for c in bodies["two_choices"]["choices"]] == [0, 1]
    assert bodies["reasoning_effort"]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert bodies["length_cap"]["choices"][0]["finish_reason"] == "length"
    assert bodies["length_cap"]["usage"]["completion_tokens"] <= 3
    content = bodies["json_object"]["choices"][0]["message"]["content"]
    assert json.loads(content) == {
        "answer": "Simulated answer to: What is the weather in Paris today?"
    }
    assert all(body["model"] == MODEL for body in bodies.values())


@pytest.mark.parametrize("scenario", sorted(RESPONSES_SCENARIOS))
def test_response_matches_openai_types_and_spec(
    sim: SimulatorServer, validate_spec: Validate, scenario: str
) -> None:
    response = post(sim, "responses", RESPONSES_SCENARIOS[scenario])

    assert response.status_code == 200
    body = response.json()
    Response.model_validate(body)
    validate_spec("Response", body)
    usage = body["usage"]
    assert set(usage["input_tokens_details"]) >= {"cached_tokens", "cache_write_tokens"}
    assert "reasoning_tokens" in usage["output_tokens_details"]
    for item in body["output"]:
        for part in item.get("content", []) if item["type"] == "message" else []:
            assert part["annotations"] == []
            assert part["logprobs"] == []


def test_responses_scenarios_answer_as_their_requests_ask(sim: SimulatorServer) -> None:
    bodies = {name: post(sim, "responses", req).json() for name, req in RESPONSES_SCENARIOS.items()}

    plain = Response.model_validate(bodies["plain_text"])
    assert plain.output_text == "Simulated answer to: What is the weather in Paris today?"
    assert plain.status == "completed"
    assert plain.tool_choice == "auto"
    assert plain.parallel_tool_calls is True
    assert (plain.temperature, plain.top_p, plain.metadata) == (1.0, 1.0, {})
    items = bodies["input_items"]
    assert items["instructions"] == "Be brief."
    assert items["metadata"] == {"job": "42"}
    calls = bodies["function_tools"]["output"]
    assert [(c["type"], c["name"], c["status"]) for c in calls] == [
        ("function_call", "get_weather", "completed"),
        ("function_call", "get_time", "completed"),
    ]
    assert all(c["id"].startswith("fc_") and c["call_id"].startswith("call_") for c in calls)
    assert [i["type"] for i in bodies["tool_output_returned"]["output"]] == ["message"]
    reasoning = bodies["reasoning"]
    assert [i["type"] for i in reasoning["output"]] == ["reasoning", "message"]
    assert reasoning["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    capped = bodies["output_cap"]
    assert capped["status"] == "incomplete"
    assert capped["incomplete_details"] == {"reason": "max_output_tokens"}


def test_chat_stream_with_usage_validates_and_matches_the_plain_answer(
    sim: SimulatorServer, validate_spec: Validate
) -> None:
    request = CHAT_SCENARIOS["plain_text"]
    plain = post(sim, "chat/completions", request).json()

    response = post(
        sim,
        "chat/completions",
        {**request, "stream": True, "stream_options": {"include_usage": True}},
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = chat_chunks(response.content)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        validate_spec("CreateChatCompletionStreamResponse", chunk)
    assert {chunk["id"] for chunk in chunks} == {plain["id"]}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) > 3
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]


def test_chat_stream_without_include_usage_sends_no_usage_chunk(sim: SimulatorServer) -> None:
    request = {**CHAT_SCENARIOS["plain_text"], "stream": True}

    chunks = chat_chunks(post(sim, "chat/completions", request).content)

    assert all(chunk["choices"] for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)


def test_streamed_parallel_tool_calls_assemble_by_index_into_the_plain_answer(
    sim: SimulatorServer, validate_spec: Validate
) -> None:
    request = CHAT_SCENARIOS["parallel_tools"]
    plain_calls = post(sim, "chat/completions", request).json()["choices"][0]["message"][
        "tool_calls"
    ]

    chunks = chat_chunks(post(sim, "chat/completions", {**request, "stream": True}).content)

    assembled: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        validate_spec("CreateChatCompletionStreamResponse", chunk)
        for fragment in chunk["choices"][0]["delta"].get("tool_calls", []):
            index = fragment["index"]
            order.append(index)
            if index not in assembled:
                # Only the first fragment of a call carries its id, type and name.
                assembled[index] = {
                    "id": fragment["id"],
                    "type": fragment["type"],
                    "function": {"name": fragment["function"]["name"], "arguments": ""},
                }
            assembled[index]["function"]["arguments"] += fragment["function"].get("arguments", "")
    assert [assembled[i] for i in sorted(assembled)] == plain_calls
    assert order != sorted(order), "parallel calls' fragments should be interleaved"
    assert order.count(0) > 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("scenario", ["plain_text", "function_tools", "reasoning", "output_cap"])
def test_response_stream_events_validate_and_end_with_the_plain_response(
    sim: SimulatorServer, validate_spec: Validate, scenario: str
) -> None:
    request = RESPONSES_SCENARIOS[scenario]
    plain = post(sim, "responses", request).json()

    events = response_events(post(sim, "responses", {**request, "stream": True}).content)

    for event in events:
        STREAM_EVENT.validate_python(event)
        validate_spec("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress"
    terminal = "response.completed" if plain["status"] == "completed" else "response.incomplete"
    assert events[-1]["type"] == terminal
    assert events[-1]["response"] == plain
    validate_spec("Response", events[0]["response"])
    done_items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done_items == plain["output"]


def test_response_stream_deltas_rebuild_text_and_arguments(sim: SimulatorServer) -> None:
    text_events = response_events(
        post(sim, "responses", {**RESPONSES_SCENARIOS["plain_text"], "stream": True}).content
    )
    call_events = response_events(
        post(sim, "responses", {**RESPONSES_SCENARIOS["function_tools"], "stream": True}).content
    )

    text_deltas = [e["delta"] for e in text_events if e["type"] == "response.output_text.delta"]
    (text_done,) = [e for e in text_events if e["type"] == "response.output_text.done"]
    assert len(text_deltas) > 3
    assert "".join(text_deltas) == text_done["text"]
    types = [e["type"] for e in text_events]
    assert types[2:8] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    for done in [e for e in call_events if e["type"] == "response.function_call_arguments.done"]:
        deltas = [
            e["delta"]
            for e in call_events
            if e["type"] == "response.function_call_arguments.delta"
            and e["item_id"] == done["item_id"]
        ]
        assert len(deltas) > 1
        assert "".join(deltas) == done["arguments"]


@pytest.mark.parametrize(
    ("answer", "status", "error_type", "code"),
    [
        ({"status": 429, "retry_after": "2"}, 429, "rate_limit_error", "rate_limit_exceeded"),
        ({"status": 500}, 500, "server_error", None),
        ({"status": 503}, 503, "server_error", "overloaded"),
    ],
)
def test_scripted_error_bodies_validate(
    sim: SimulatorServer,
    validate_spec: Validate,
    answer: dict[str, Any],
    status: int,
    error_type: str,
    code: str | None,
) -> None:
    sim.script([answer])

    response = post(sim, "chat/completions", CHAT_SCENARIOS["plain_text"])

    assert response.status_code == status
    body = response.json()
    validate_spec("ErrorResponse", body)
    error = ErrorObject.model_validate(body["error"])
    assert (error.type, error.code) == (error_type, code)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", {"messages": QUESTION}, "model"),
        ("chat/completions", {"model": MODEL}, "messages"),
        ("chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("chat/completions", {"model": MODEL, "messages": QUESTION, "n": 0}, "n"),
        (
            "chat/completions",
            {
                "model": MODEL,
                "messages": QUESTION,
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        ("responses", {"input": "hi"}, "model"),
        ("responses", {"model": MODEL, "input": 7}, "input"),
    ],
)
def test_invalid_requests_get_400_naming_the_param(
    sim: SimulatorServer, validate_spec: Validate, path: str, body: dict[str, Any], param: str
) -> None:
    response = post(sim, path, body)

    assert response.status_code == 400
    validate_spec("ErrorResponse", response.json())
    error = ErrorObject.model_validate(response.json()["error"])
    assert (error.type, error.param) == ("invalid_request_error", param)


def test_non_json_body_gets_400(sim: SimulatorServer, validate_spec: Validate) -> None:
    response = httpx2.post(
        sim.base_url + "chat/completions",
        content=b"{not json",
        headers={**auth(sim), "content-type": "application/json"},
    )

    assert response.status_code == 400
    validate_spec("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key-123456", "Basic abc"])
def test_bad_credentials_get_401_with_an_error_body(
    sim: SimulatorServer, validate_spec: Validate, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = httpx2.post(
        sim.base_url + "chat/completions", json=CHAT_SCENARIOS["plain_text"], headers=headers
    )

    assert response.status_code == 401
    validate_spec("ErrorResponse", response.json())
    ErrorObject.model_validate(response.json()["error"])
    assert "wrong-key-123456" not in response.text


def test_models_endpoints_follow_the_spec(sim: SimulatorServer, validate_spec: Validate) -> None:
    listing = httpx2.get(sim.base_url + "models", headers=auth(sim))
    one = httpx2.get(sim.base_url + "models/openai/gpt-5.4-mini", headers=auth(sim))
    missing = httpx2.get(sim.base_url + "models/acme/unknown", headers=auth(sim))

    validate_spec("ListModelsResponse", listing.json())
    assert [m["id"] for m in listing.json()["data"]] == ["openai/gpt-5.4-mini"]
    validate_spec("Model", one.json())
    assert one.json()["owned_by"] == "openai"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_unknown_paths_get_an_openai_404_body(
    sim: SimulatorServer, validate_spec: Validate
) -> None:
    response = httpx2.post(sim.base_url + "completions/legacy", json={}, headers=auth(sim))

    assert response.status_code == 404
    validate_spec("ErrorResponse", response.json())
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/completions/legacy)"
