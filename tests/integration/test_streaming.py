"""Streamed jobs and their followers: a real worker reads SSE from a paced simulator, publishes
to Redis Streams, and `GET /v1/jobs/{id}/events` serves it live, resumable, or replayed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from tests import services as service_fixtures
from tests.conftest import SIM_KEY, ApiServer
from tests.integration import test_request_surface as surface
from tests.integration.test_request_surface import Stack, running_stack, submit_job
from worker.settings import Settings
from worker.simulator import SimulatorConfig, SimulatorServer
from worker.sse import SSEDecoder, SSEEvent

MODEL = "openai/gpt-5.4-mini"
# A pinned clock makes the simulator's streamed and plain answers equal to the byte.
FIXED_NOW = 1_750_000_000.0


def function_tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": sorted(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


WEATHER = function_tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}})
TIDES = function_tool("get_tides", {"harbour": {"type": "string"}, "metric": {"type": "boolean"}})
QUESTION = "Weather in Saint-Malo for the next five days, and the tides at the harbour?"
LONG_QUESTION = " ".join(f"word{n}" for n in range(60))


@pytest.fixture(scope="module")
def paced_sim() -> Iterator[SimulatorServer]:
    """A simulator that paces its SSE frames like a generating model, with a pinned clock."""
    config = SimulatorConfig(api_key=SIM_KEY, chunk_delay_ms=2, clock=lambda: FIXED_NOW)
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    services: service_fixtures.TestServices,
    paced_sim: SimulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(services, paced_sim, tmp_path_factory.mktemp("streaming")) as running:
        yield running


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.sim.reset()
    return stack


def follow(
    api: ApiServer, job_id: str, last_event_id: str | None = None, limit: int | None = None
) -> list[SSEEvent]:
    """Read the job's events until the server ends the stream, or hang up after `limit`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_bytes():
            events.extend(decoder.feed(chunk))
            if limit is not None and len(events) >= limit:
                return events[:limit]
    return events + decoder.close()


def data(event: SSEEvent) -> Any:
    return orjson.loads(event.data)


def plain_answer(sim: SimulatorServer, kind: str, sent: dict[str, Any]) -> dict[str, Any]:
    """What the simulator answers the same request without streaming."""
    plain = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
    return surface.plain_answer(sim, kind, plain)


def model_requests(sim: SimulatorServer, path: str) -> list[dict[str, Any]]:
    return [r["body"] for r in sim.requests() if r["path"].endswith(path)]


def attempts(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT number, outcome, error_type, time_to_first_token_s, tokens_per_s"
                    " FROM attempt WHERE job_id = :j ORDER BY number"
                ),
                {"j": job_id},
            )
        )


def test_streamed_chat_with_parallel_tool_calls_is_stored_as_a_plain_answer_and_followed(
    live: Stack, engine: Engine
) -> None:
    request = {
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [WEATHER, TIDES],
        "stream": True,
    }
    job_id = submit_job(live.api, "chat", request)
    events = follow(live.api, job_id)

    view: dict[str, Any] = live.api.client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded", view
    [sent] = model_requests(live.sim, "/chat/completions")
    assert sent == {**request, "model": MODEL, "stream_options": {"include_usage": True}}
    plain = plain_answer(live.sim, "chat", sent)
    assert view["result"] == plain
    calls = plain["choices"][0]["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_tides"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in view["tool_calls"]] == [
        (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls
    ]
    usage = plain["usage"]
    assert (view["usage"]["input_tokens"], view["usage"]["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    [attempt] = attempts(engine, job_id)
    assert attempt.outcome == "succeeded"
    assert attempt.time_to_first_token_s > 0
    assert attempt.tokens_per_s > 0
    assert view["attempts"][0]["time_to_first_token_s"] == attempt.time_to_first_token_s

    # The follower saw the job start, each call announced, the arguments in order, the end.
    assert [(e.event, data(e)["status"]) for e in events if e.event == "state"] == [
        ("state", "running"),
        ("state", "succeeded"),
    ]
    started = [data(e) for e in events if e.event == "tool_call.started"]
    assert [(s["call_index"], s["call_id"], s["name"]) for s in started] == [
        (n, c["id"], c["function"]["name"]) for n, c in enumerate(calls)
    ]
    deltas = [data(e) for e in events if e.event == "tool_call.delta"]
    assert {d["attempt"] for d in deltas} == {1}
    for n, call in enumerate(calls):
        joined = "".join(d["delta"] for d in deltas if d["call_index"] == n)
        assert joined == call["function"]["arguments"]
    # Fragments of parallel calls interleave, so they cannot all have been merged into one.
    assert len(deltas) > len(calls)
    assert events[-1].event == "job"
    assert data(events[-1]) == view
    ids = [e.id for e in events]
    assert all(ids)
    assert ids == sorted(set(ids), key=lambda i: tuple(map(int, i.split("-"))))


def test_streamed_response_job_result_equals_the_plain_answer(live: Stack) -> None:
    request = {
        "input": "Describe the harbour at dawn in a few words.",
        "instructions": "Be vivid.",
        "reasoning": {"effort": "low", "summary": "auto"},
        "stream": True,
    }
    job_id = submit_job(live.api, "response", request)
    events = follow(live.api, job_id)
    view = live.api.client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded", view
    [sent] = model_requests(live.sim, "/responses")
    assert sent == {**request, "model": MODEL}
    plain = plain_answer(live.sim, "response", sent)
    assert view["result"] == plain
    assert (
        view["usage"]["reasoning_tokens"]
        == plain["usage"]["output_tokens_details"]["reasoning_tokens"]
    )
    text_deltas = "".join(data(e)["delta"] for e in events if e.event == "text.delta")
    assert text_deltas == view["output_text"]
    assert any(e.event == "reasoning.delta" for e in events)
    assert events[-1].event == "job"


def test_follower_that_reconnects_with_last_event_id_misses_nothing_and_sees_nothing_twice(
    live: Stack,
) -> None:
    request = {"messages": [{"role": "user", "content": LONG_QUESTION}], "stream": True}
    job_id = submit_job(live.api, "chat", request)
    first = follow(live.api, job_id, limit=4)
    second = follow(live.api, job_id, last_event_id=first[-1].id)
    replay = follow(live.api, job_id)  # the job is over: a replay that ends by itself

    assert [(e.id, e.event, e.data) for e in first + second] == [
        (e.id, e.event, e.data) for e in replay
    ]
    view = data(replay[-1])
    assert view["status"] == "succeeded"
    text_deltas = "".join(data(e)["delta"] for e in replay if e.event == "text.delta")
    assert text_deltas == view["output_text"]
    assert LONG_QUESTION[:100] in view["output_text"]
    assert len(second) > 1  # the follower hung up with more to come


@pytest.mark.parametrize("fault", ["reset", "malformed"])
@pytest.mark.parametrize("kind", ["chat", "response"])
def test_stream_cut_midway_is_retried_whole_without_text_from_the_broken_attempt(
    live: Stack, engine: Engine, kind: str, fault: str
) -> None:
    live.sim.script([{"kind": fault}])
    question = f"Tell me about the {fault} on a {kind} stream."
    request: dict[str, Any] = {"stream": True}
    if kind == "chat":
        request["messages"] = [{"role": "user", "content": question}]
    else:
        request["input"] = question
    job_id = submit_job(live.api, kind, request)
    events = follow(live.api, job_id)

    view = live.api.client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded", view
    sent = model_requests(live.sim, surface.PATHS[kind])
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert view["result"] == plain_answer(live.sim, kind, sent[1])
    assert view["output_text"].count(question) == 1
    expected_error = "connection" if fault == "reset" else "malformed_stream"
    assert [(a.number, a.outcome, a.error_type) for a in attempts(engine, job_id)] == [
        (1, "retry", expected_error),
        (2, "succeeded", None),
    ]
    states = [(data(e)["status"], data(e)["attempt"]) for e in events if e.event == "state"]
    assert states == [("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 2)]
    # Only the second attempt's deltas make the answer; followers can tell them apart.
    retried = "".join(
        data(e)["delta"] for e in events if e.event == "text.delta" and data(e)["attempt"] == 2
    )
    assert retried == view["output_text"]


def test_plain_job_publishes_its_states_and_final_view(live: Stack) -> None:
    job_id = submit_job(live.api, "chat", {"messages": [{"role": "user", "content": "hi"}]})
    events = follow(live.api, job_id)
    assert [e.event for e in events] == ["state", "state", "job"]
    assert [data(e)["status"] for e in events] == ["running", "succeeded", "succeeded"]
    assert data(events[-1]) == live.api.client.get(f"/v1/jobs/{job_id}").json()


def test_follower_of_a_job_nobody_runs_ends_when_it_is_cancelled(
    deployment: Callable[..., Settings], start_api: Callable[[Settings], ApiServer]
) -> None:
    # No worker: nobody publishes the end, so the follower learns it from Postgres.
    api = start_api(deployment(events_idle_s=0.2))
    job_id = submit_job(api, "chat", {"messages": [{"role": "user", "content": "never"}]})
    decoder = SSEDecoder()
    received: list[SSEEvent] = []
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        # The headers are out: the route has seen the job queued and is now waiting on Redis.
        assert response.status_code == 200
        assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        for chunk in response.iter_bytes():
            received.extend(decoder.feed(chunk))
    received += decoder.close()
    assert [e.event for e in received] == ["job"]
    assert data(received[0])["status"] == "cancelled"
    # Already over: a new follower gets the final view at once.
    assert [data(e)["status"] for e in follow(api, job_id)] == ["cancelled"]


def test_events_of_unknown_jobs_and_bad_event_ids_are_refused(live: Stack) -> None:
    missing = live.api.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/events")
    assert missing.status_code == 404
    assert live.api.client.get("/v1/jobs/nope/events").status_code == 404
    job_id = submit_job(live.api, "chat", {"messages": [{"role": "user", "content": "x"}]})
    bad = live.api.client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["field"] == "Last-Event-ID"
