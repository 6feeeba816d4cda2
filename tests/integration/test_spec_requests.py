"""Every body the worker sends upstream validates against the OpenAI spec's request schemas
(`CreateChatCompletionRequest`, `CreateResponse`), across the whole feature list: plain,
streamed, and follow-ups. Bodies are read from the simulator's request log, as received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import orjson
import pytest
from sqlalchemy import Engine

from tests import services as service_fixtures
from tests.integration.test_pipeline import poll_terminal
from tests.integration.test_request_surface import (
    ASK,
    FEATURES,
    FLAT_WEATHER,
    MODEL,
    TIDES,
    WEATHER,
    Stack,
    run_job,
    running_stack,
    stored_request,
    submit_job,
)
from tests.simulator.conftest import SPEC_DIR, SpecSchemas
from worker.payloads import build_upstream_request
from worker.simulator import SimulatorServer

SCHEMAS = {"/v1/chat/completions": "CreateChatCompletionRequest", "/v1/responses": "CreateResponse"}
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    **FEATURES,
    "chat_streamed_tools": (
        "chat",
        {
            "messages": [ASK],
            "tools": [WEATHER, TIDES],
            "stream": True,
            "stream_options": {"include_obfuscation": False},
        },
    ),
    "response_streamed_reasoning": (
        "response",
        {"input": [ASK], "reasoning": {"effort": "medium", "summary": "auto"}, "stream": True},
    ),
}
FOLLOW_UPS = ("chat_follow_up", "response_follow_up")


@pytest.fixture(scope="module")
def spec() -> SpecSchemas:
    path = SPEC_DIR / "openapi.subset.json"
    if not path.is_file():
        pytest.skip(f"OpenAI spec subset not found at {path} (it lives in shared/spec/)")
    return SpecSchemas(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def stack(
    services: service_fixtures.TestServices,
    simulator: SimulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(services, simulator, tmp_path_factory.mktemp("spec")) as running:
        yield running


def _recorded(stack: Stack) -> list[tuple[str, Any]]:
    return [(r["path"], r["body"]) for r in stack.sim.requests() if r["path"] in SCHEMAS]


def _searches(request: dict[str, Any]) -> bool:
    return any(tool.get("type") == "web_search_preview" for tool in request.get("tools", []))


def _run_all(
    stack: Stack, jobs: dict[str, tuple[str, dict[str, Any], dict[str, Any]]]
) -> dict[str, str]:
    """Submit every job at once, wait for them all; name -> job id."""
    ids = {
        name: submit_job(stack.api, kind, request, **extra)
        for name, (kind, request, extra) in jobs.items()
    }
    for name, job_id in ids.items():
        assert poll_terminal(stack.api, job_id)["status"] == "succeeded", name
    return ids


@pytest.fixture(scope="module")
def sent(stack: Stack, engine: Engine) -> dict[str, list[tuple[str, Any]]]:
    """Each scenario's upstream requests. The jobs run concurrently; each recorded body is
    matched to its job through the job's stored request. The scripted web search runs alone."""
    stack.sim.reset()
    plain = {n: (k, r, {}) for n, (k, r) in SCENARIOS.items() if not _searches(r)}
    parents = {
        "chat_parent": ("chat", {"messages": [ASK], "tools": [WEATHER, TIDES]}, {}),
        "response_parent": ("response", {"input": [ASK], "tools": [FLAT_WEATHER]}, {}),
    }
    ids = _run_all(stack, {**plain, **parents})
    chat_parent = poll_terminal(stack.api, ids["chat_parent"])
    calls = chat_parent["result"]["choices"][0]["message"]["tool_calls"]
    answers = [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls]
    [call] = poll_terminal(stack.api, ids["response_parent"])["tool_calls"]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}
    follow_ups = {
        "chat_follow_up": ("chat", {"messages": answers}, {"parent_job_id": ids["chat_parent"]}),
        "response_follow_up": (
            "response",
            {"input": [output]},
            {"parent_job_id": ids["response_parent"]},
        ),
    }
    ids.update(_run_all(stack, follow_ups))
    recorded = _recorded(stack)
    kinds = {name: kind for name, (kind, _, _) in {**plain, **parents, **follow_ups}.items()}
    bodies: dict[str, list[tuple[str, Any]]] = {}
    for name, job_id in ids.items():
        _, expected = build_upstream_request(kinds[name], stored_request(engine, job_id), MODEL)  # type: ignore[arg-type]
        bodies[name] = [(path, body) for path, body in recorded if body == orjson.loads(expected)]
    for name, (kind, request) in SCENARIOS.items():
        if _searches(request):
            run_job(stack, engine, kind, request)
            bodies[name] = _recorded(stack)
    return bodies


@pytest.mark.parametrize("scenario", [*sorted(SCENARIOS), *FOLLOW_UPS])
def test_every_request_the_worker_sends_follows_the_spec(
    sent: dict[str, list[tuple[str, Any]]], spec: SpecSchemas, scenario: str
) -> None:
    [(path, body)] = sent[scenario]
    spec.validate(SCHEMAS[path], body)


def test_the_spec_check_refuses_what_upstream_would(spec: SpecSchemas) -> None:
    bad_chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}
    with pytest.raises(jsonschema.ValidationError):
        spec.validate("CreateChatCompletionRequest", bad_chat)
    bad_input = {"model": "m", "input": [{"type": "input_image", "image_url": 3}]}
    with pytest.raises(jsonschema.ValidationError):
        spec.validate("CreateResponse", bad_input)
