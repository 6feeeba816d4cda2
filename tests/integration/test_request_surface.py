"""Every request feature goes through untouched: submitted, sent upstream as given (asserted at
the simulator), stored, and its effect returned in the job view. Follow-up jobs continue their
parent. One worker and one API serve the whole module."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from sqlalchemy import Engine, text

from tests import services as service_fixtures
from tests.conftest import SIM_KEY, ApiServer, WorkerProcess, make_settings
from tests.integration.test_pipeline import poll_terminal
from worker.settings import Settings
from worker.simulator import SimulatorServer

MODEL = "openai/gpt-5.4-mini"
PATHS = {"chat": "chat/completions", "response": "responses"}
PDF_DATA = "data:application/pdf;base64,JVBERi0xLjQKJcfsj6IK"
PNG_DATA = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
    "PchI7wAAAABJRU5ErkJggg=="
)
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIDES_SCHEMA = {
    "type": "object",
    "properties": {"harbour": {"type": "string"}},
    "required": ["harbour"],
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY_SCHEMA}}
TIDES = {"type": "function", "function": {"name": "get_tides", "parameters": TIDES_SCHEMA}}
# Responses' function tools are flat, and `strict` is required (true needs a closed schema).
FLAT_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": CITY_SCHEMA,
    "strict": True,
}
FLAT_TIDES = {"type": "function", "name": "get_tides", "parameters": TIDES_SCHEMA, "strict": False}
ASK = {"role": "user", "content": "Weather in Brest for two days, and the tides?"}

# name -> (kind, request): the feature list of issue 4, as callers send it.
FEATURES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat_every_role": (
        "chat",
        {
            "messages": [
                {"role": "developer", "content": "Answer in one line."},
                {"role": "system", "content": [{"type": "text", "text": "You are a forecaster."}]},
                {"role": "user", "content": "Weather in Brest?", "name": "ana"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_prev",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Brest"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_prev", "content": "rain, 12C"},
            ],
            "tools": [WEATHER],
        },
    ),
    "chat_image_and_file_inputs": (
        "chat",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What do these show?"},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "https://example.com/harbour.png",
                                "detail": "high",
                            },
                        },
                        {"type": "image_url", "image_url": {"url": PNG_DATA}},
                        {"type": "file", "file": {"file_data": PDF_DATA, "filename": "tides.pdf"}},
                        {"type": "file", "file": {"file_id": "file-abc123"}},
                    ],
                }
            ]
        },
    ),
    "chat_tools_choice_and_parallelism": (
        "chat",
        {
            "messages": [ASK],
            "tools": [WEATHER, TIDES],
            "tool_choice": {"type": "function", "function": {"name": "get_tides"}},
            "parallel_tool_calls": False,
        },
    ),
    "chat_structured_output": (
        "chat",
        {
            "messages": [ASK],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "forecast", "schema": CITY_SCHEMA, "strict": True},
            },
        },
    ),
    "chat_sampling_and_limits": (
        "chat",
        {
            "messages": [ASK],
            "temperature": 0.3,
            "seed": 7,
            "n": 2,
            "max_completion_tokens": 4,
        },
    ),
    "chat_reasoning_effort_and_unknown_fields": (
        "chat",
        {
            "messages": [ASK],
            "reasoning_effort": "high",
            "top_p": 0.9,
            "x_vendor_extension": {"kept": [1, 2]},
        },
    ),
    "response_instructions_image_and_file_inputs": (
        "response",
        {
            "instructions": "Describe briefly.",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What do these show?"},
                        {
                            "type": "input_image",
                            "image_url": "https://example.com/harbour.png",
                            "detail": "low",
                        },
                        {"type": "input_image", "image_url": PNG_DATA, "detail": "auto"},
                        {"type": "input_file", "file_url": "https://example.com/tides.pdf"},
                        {"type": "input_file", "file_data": PDF_DATA, "filename": "tides.pdf"},
                    ],
                }
            ],
        },
    ),
    "response_tools_choice_and_parallelism": (
        "response",
        {
            "input": [ASK],
            "tools": [FLAT_WEATHER, FLAT_TIDES],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        },
    ),
    "response_structured_output_and_sampling": (
        "response",
        {
            "input": "Weather in Brest for two days?",
            "text": {"format": {"type": "json_schema", "name": "forecast", "schema": CITY_SCHEMA}},
            "temperature": 0.2,
            "max_output_tokens": 64,
        },
    ),
    "response_reasoning_and_output_cap": (
        "response",
        {
            "input": "Why is the sea salty? Answer at length.",
            "reasoning": {"effort": "low", "summary": "auto"},
            "max_output_tokens": 16,
        },
    ),
    "response_previous_response_id": (
        "response",
        {"input": "And tomorrow?", "previous_response_id": "resp_0123456789abcdef01234567"},
    ),
    "response_web_search_preview": (
        "response",
        {
            "input": "Latest news about the Brest harbour?",
            "tools": [{"type": "web_search_preview", "search_context_size": "low"}],
            "tool_choice": {"type": "web_search_preview"},
            "include": ["web_search_call.action.sources"],
        },
    ),
}
SEARCH_ACTION = {
    "type": "search",
    "query": "Brest harbour news",
    "sources": [{"type": "url", "url": "https://example.com/brest"}],
}


@dataclass
class Stack:
    """A deployment with one worker and the API."""

    settings: Settings
    api: ApiServer
    sim: SimulatorServer


@contextmanager
def running_stack(
    services: service_fixtures.TestServices, sim: SimulatorServer, log_dir: Path
) -> Iterator[Stack]:
    """Start a worker and the API on an isolated deployment; clean up after."""
    settings = make_settings(services, sim)
    worker = WorkerProcess(settings, 8, log_dir / "worker.log")
    api: ApiServer | None = None
    try:
        worker.wait_ready()
        api = ApiServer(settings)
        yield Stack(settings, api, sim)
    finally:
        if api is not None:
            api.stop()
        worker.stop()
        service_fixtures.delete_prefixed_keys(services.redis_url, settings.redis_prefix)


@pytest.fixture(scope="module")
def stack(
    services: service_fixtures.TestServices,
    simulator: SimulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(services, simulator, tmp_path_factory.mktemp("surface")) as running:
        yield running


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.sim.reset()
    return stack


@dataclass
class Ran:
    """A finished job: its view, the body the simulator received, the stored request."""

    view: dict[str, Any]
    sent: dict[str, Any]
    stored: dict[str, Any]


def plain_answer(sim: SimulatorServer, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The simulator's answer to a body sent straight to it."""
    answer = httpx2.post(
        sim.base_url + PATHS[kind], json=body, headers={"Authorization": f"Bearer {SIM_KEY}"}
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def script_web_search(sim: SimulatorServer, request: dict[str, Any]) -> None:
    """The simulator has no search engine: script an answer that searched, then replied."""
    answer = plain_answer(sim, "response", {**request, "model": MODEL})
    search = {"id": "ws_0001", "type": "web_search_call", "status": "completed"}
    answer["output"] = [{**search, "action": SEARCH_ACTION}, *answer["output"]]
    sim.reset()
    sim.script([{"status": 200, "body": answer}])


def submit_job(api: ApiServer, kind: str, request: dict[str, Any], **extra: Any) -> str:
    answer = api.client.post("/v1/jobs", json={"kind": kind, "request": request, **extra})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def stored_request(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        stored: dict[str, Any] = connection.execute(
            text("SELECT request FROM job WHERE id = :j"), {"j": uuid.UUID(job_id)}
        ).scalar_one()
    return stored


def run_job(stack: Stack, engine: Engine, kind: str, request: dict[str, Any], **extra: Any) -> Ran:
    """Submit, wait for the end, and collect what was sent and stored."""
    if any(tool.get("type") == "web_search_preview" for tool in request.get("tools", [])):
        script_web_search(stack.sim, request)
    job_id = submit_job(stack.api, kind, request, **extra)
    view = poll_terminal(stack.api, job_id)
    bodies = [r["body"] for r in stack.sim.requests() if r["path"].endswith(PATHS[kind])]
    assert bodies, f"nothing reached the simulator for {kind}"
    return Ran(view, bodies[-1], stored_request(engine, job_id))


def check_every_role(ran: Ran) -> None:
    # The conversation ends with the tool's answer, so the model answers in text.
    assert ran.view["output_text"].startswith("Simulated answer to: Weather in Brest?")
    assert ran.view["tool_calls"] == []


def check_inputs(ran: Ran) -> None:
    assert "What do these show?" in ran.view["output_text"]


def check_chat_tools(ran: Ran) -> None:
    [call] = ran.view["tool_calls"]
    assert (call["name"], call["type"]) == ("get_tides", "function")
    assert set(call["arguments"]) == {"harbour"}
    assert ran.view["result"]["choices"][0]["finish_reason"] == "tool_calls"


def check_chat_structured(ran: Ran) -> None:
    answer = orjson.loads(ran.view["output_text"])
    assert isinstance(answer["city"], str)
    assert isinstance(answer["days"], int)


def check_chat_sampling(ran: Ran) -> None:
    choices = ran.view["result"]["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert {c["finish_reason"] for c in choices} == {"length"}
    assert ran.view["usage"]["output_tokens"] <= 2 * 4


def check_reasoning(ran: Ran) -> None:
    assert ran.view["usage"]["reasoning_tokens"] > 0


def check_response_inputs(ran: Ran) -> None:
    assert ran.view["result"]["instructions"] == "Describe briefly."
    check_inputs(ran)


def check_response_tools(ran: Ran) -> None:
    [call] = ran.view["tool_calls"]
    item = next(i for i in ran.view["result"]["output"] if i["type"] == "function_call")
    assert (call["call_id"], call["name"]) == (item["call_id"], "get_weather")
    assert call["arguments"] == orjson.loads(item["arguments"])


def check_response_structured(ran: Ran) -> None:
    check_chat_structured(ran)
    assert ran.view["result"]["temperature"] == 0.2
    assert ran.view["result"]["max_output_tokens"] == 64


def check_response_reasoning(ran: Ran) -> None:
    check_reasoning(ran)
    result = ran.view["result"]
    assert result["output"][0]["type"] == "reasoning"
    assert (result["status"], result["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )


def check_previous_response(ran: Ran) -> None:
    assert ran.view["result"]["previous_response_id"] == "resp_0123456789abcdef01234567"


def check_web_search(ran: Ran) -> None:
    assert ran.view["tool_calls"] == [
        {
            "call_id": "ws_0001",
            "name": "web_search",
            "type": "web_search_call",
            "arguments": SEARCH_ACTION,
            "arguments_raw": None,
        }
    ]
    assert ran.view["output_text"]


CHECKS: dict[str, Callable[[Ran], None]] = {
    "chat_every_role": check_every_role,
    "chat_image_and_file_inputs": check_inputs,
    "chat_tools_choice_and_parallelism": check_chat_tools,
    "chat_structured_output": check_chat_structured,
    "chat_sampling_and_limits": check_chat_sampling,
    "chat_reasoning_effort_and_unknown_fields": check_reasoning,
    "response_instructions_image_and_file_inputs": check_response_inputs,
    "response_tools_choice_and_parallelism": check_response_tools,
    "response_structured_output_and_sampling": check_response_structured,
    "response_reasoning_and_output_cap": check_response_reasoning,
    "response_previous_response_id": check_previous_response,
    "response_web_search_preview": check_web_search,
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_is_sent_as_given_stored_and_shown(
    live: Stack, engine: Engine, feature: str
) -> None:
    kind, request = FEATURES[feature]
    ran = run_job(live, engine, kind, request)
    assert ran.view["status"] == "succeeded", ran.view
    assert ran.sent == {**request, "model": MODEL}
    assert ran.stored == request
    CHECKS[feature](ran)


def test_chat_follow_up_answers_tool_calls_without_resending_history(
    live: Stack, engine: Engine
) -> None:
    first = {"messages": [ASK], "tools": [WEATHER, TIDES], "temperature": 0}
    parent = run_job(live, engine, "chat", first)
    calls = parent.view["result"]["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 2
    answers = [
        {"role": "tool", "tool_call_id": call["id"], "content": f"result {n}"}
        for n, call in enumerate(calls)
    ]
    follow_up = {"messages": answers, "tools": [WEATHER, TIDES]}
    child = run_job(live, engine, "chat", follow_up, parent_job_id=parent.view["id"])

    history = [*first["messages"], {"role": "assistant", "content": None, "tool_calls": calls}]
    expected = {**follow_up, "messages": [*history, *answers]}
    assert child.stored == expected  # expanded once, at submission: stored as sent
    assert child.sent == {**expected, "model": MODEL}
    assert child.view["status"] == "succeeded"
    assert child.view["tool_calls"] == []
    assert child.view["output_text"].startswith("Simulated answer to: Weather in Brest")
    assert (child.view["parent_job_id"], parent.view["parent_job_id"]) == (parent.view["id"], None)

    # A chain keeps going: the child's stored request already holds the whole history.
    more = {"messages": [{"role": "user", "content": "Thanks!"}]}
    grandchild = run_job(live, engine, "chat", more, parent_job_id=child.view["id"])
    assistant = child.view["result"]["choices"][0]["message"]
    assert grandchild.sent["messages"] == [
        *history,
        *answers,
        {"role": "assistant", "content": assistant["content"]},
        *more["messages"],
    ]


def test_response_follow_up_chains_on_the_parents_upstream_id(live: Stack, engine: Engine) -> None:
    first = {"input": [ASK], "tools": [FLAT_WEATHER]}
    parent = run_job(live, engine, "response", first)
    [call] = parent.view["tool_calls"]
    output = [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]
    follow_up = {"input": output, "tools": [FLAT_WEATHER]}
    child = run_job(live, engine, "response", follow_up, parent_job_id=parent.view["id"])

    expected = {**follow_up, "previous_response_id": parent.view["result"]["id"]}
    assert child.stored == expected
    assert child.view["parent_job_id"] == parent.view["id"]
    # The same follow-up under the same idempotency key is the same job, not a conflict.
    again = {"kind": "response", "request": follow_up, "parent_job_id": parent.view["id"]}
    key = f"follow-up-{uuid.uuid4()}"
    first = live.api.client.post("/v1/jobs", json={**again, "idempotency_key": key})
    second = live.api.client.post("/v1/jobs", json={**again, "idempotency_key": key})
    assert first.status_code == second.status_code == 202, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert child.sent == {**expected, "model": MODEL}
    assert child.view["result"]["previous_response_id"] == parent.view["result"]["id"]
    assert child.view["status"] == "succeeded"


def test_follow_up_of_a_missing_unfinished_or_other_kind_parent_is_refused(
    live: Stack, engine: Engine
) -> None:
    live.sim.script([{"status": 400}])
    failed = run_job(live, engine, "chat", {"messages": [ASK]})
    assert failed.view["status"] == "failed"
    answered = run_job(live, engine, "response", {"input": "hi"})
    chat = {"messages": [{"role": "user", "content": "go on"}]}
    for parent_id, reason in [
        (str(uuid.uuid4()), "no job has this id"),
        (failed.view["id"], "must have succeeded; it is failed"),
        (answered.view["id"], "is a response job, not a chat job"),
    ]:
        refused = live.api.client.post(
            "/v1/jobs", json={"kind": "chat", "request": chat, "parent_job_id": parent_id}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["fields"] == [{"field": "parent_job_id", "message": reason}]
    not_an_id = live.api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": chat, "parent_job_id": "nope"}
    )
    assert not_an_id.status_code == 422
    assert not_an_id.json()["error"]["fields"][0]["field"] == "parent_job_id"
