"""End to end: HTTP submission → Redis → a real worker process → the simulator → Postgres → poll."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Engine, text

from api_contracts.jobs import JobSubmitRequest
from tests.conftest import ApiServer, WorkerProcess, count_rows, wait_for
from worker.producer import JobProducer
from worker.settings import Settings
from worker.simulator import SimulatorServer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def poll_terminal(api: ApiServer, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        answer = api.client.get(f"/v1/jobs/{job_id}")
        if answer.status_code == 404:  # a Redis-only producer's job has no row until it is taken
            return None
        view: dict[str, Any] = answer.json()
        return view if view["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(done, timeout_s, f"job {job_id} to end", every_s=0.1)
    return result


def last_model_request(sim: SimulatorServer, path: str) -> dict[str, Any]:
    requests = [r for r in sim.requests() if r["path"].endswith(path)]
    assert requests, f"no request reached the simulator at {path}"
    body: dict[str, Any] = requests[-1]["body"]
    return body


def test_chat_job_with_tools_is_processed_and_stored(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    request = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris for 3 days?"},
        ],
        "tools": [WEATHER_TOOL],
        "temperature": 0.2,
        "x_vendor_field": {"kept": True},
    }
    answer = api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": request, "metadata": {"team": "a"}}
    )
    assert answer.status_code == 202, answer.text
    submitted = answer.json()
    assert submitted["status"] == "queued"
    assert submitted["model"] == "openai/gpt-5.4-mini"

    view = poll_terminal(api, submitted["id"])
    assert view["status"] == "succeeded", view
    assert view["attempt_count"] == 1
    assert view["metadata"] == {"team": "a"}

    sent = last_model_request(sim, "/chat/completions")
    assert sent == {**request, "model": "openai/gpt-5.4-mini"}

    upstream = view["result"]
    assert upstream["object"] == "chat.completion"
    message = upstream["choices"][0]["message"]
    expected_calls = [
        {
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": orjson.loads(call["function"]["arguments"]),
        }
        for call in message["tool_calls"]
    ]
    assert expected_calls
    assert expected_calls[0]["name"] == "get_weather"
    assert [
        {k: c[k] for k in ("call_id", "name", "arguments")} for c in view["tool_calls"]
    ] == expected_calls
    usage = upstream["usage"]
    assert view["usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
        "model": upstream["model"],
    }
    assert view["output_text"] == message["content"]

    job_id = uuid.UUID(submitted["id"])
    assert count_rows(engine, "tool_call", "job_id = :j", j=job_id) == len(expected_calls)
    assert count_rows(engine, "usage", "job_id = :j", j=job_id) == 1
    with engine.connect() as connection:
        attempt = connection.execute(
            text("SELECT outcome, status_code FROM attempt WHERE job_id = :j"), {"j": job_id}
        ).one()
    assert tuple(attempt) == ("succeeded", 200)


def test_response_job_with_function_tools_is_processed_and_stored(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    tool = {
        "type": "function",
        "name": "lookup_order",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }  # type: ignore[index]
    request = {"input": "Where is order 12?", "instructions": "Be brief.", "tools": [tool]}
    submitted = api.client.post("/v1/jobs", json={"kind": "response", "request": request}).json()

    view = poll_terminal(api, submitted["id"])
    assert view["status"] == "succeeded", view
    assert last_model_request(sim, "/responses") == {**request, "model": "openai/gpt-5.4-mini"}

    upstream = view["result"]
    assert upstream["object"] == "response"
    calls = [item for item in upstream["output"] if item["type"] == "function_call"]
    assert calls
    assert [{k: c[k] for k in ("call_id", "name", "arguments")} for c in view["tool_calls"]] == [
        {"call_id": c["call_id"], "name": c["name"], "arguments": orjson.loads(c["arguments"])}
        for c in calls
    ]
    usage = upstream["usage"]
    assert view["usage"]["input_tokens"] == usage["input_tokens"]
    assert view["usage"]["output_tokens"] == usage["output_tokens"]
    assert view["usage"]["total_tokens"] == usage["total_tokens"]
    assert view["usage"]["cached_tokens"] == usage["input_tokens_details"]["cached_tokens"]
    assert view["usage"]["reasoning_tokens"] == usage["output_tokens_details"]["reasoning_tokens"]
    assert count_rows(engine, "usage", "job_id = :j", j=uuid.UUID(submitted["id"])) == 1


def test_response_job_output_text_joins_message_parts(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    submitted = api.client.post(
        "/v1/jobs", json={"kind": "response", "request": {"input": "Hello there"}}
    ).json()
    view = poll_terminal(api, submitted["id"])
    texts = [
        part["text"]
        for item in view["result"]["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    ]
    assert view["status"] == "succeeded"
    assert view["output_text"]
    assert view["output_text"] == "".join(texts)
    assert view["tool_calls"] == []


def test_redis_only_producer_message_creates_and_runs_the_job(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
    make_producer: Callable[[Settings], JobProducer],
) -> None:
    settings = deployment()
    producer = make_producer(settings)
    submission = JobSubmitRequest.model_validate(
        {"kind": "chat", "request": {"messages": [{"role": "user", "content": "hi"}]}}
    )
    job_id = producer.enqueue_only(submission)
    assert count_rows(engine, "job", "id = :j", j=job_id) == 0

    start_worker(settings)
    api = start_api(settings)
    view = poll_terminal(api, str(job_id))
    assert view["status"] == "succeeded"
    assert view["output_text"]
    assert count_rows(engine, "job", "id = :j", j=job_id) == 1

    # A follow-up sent the same way keeps the id of the job it continues.
    follow_up = JobSubmitRequest.model_validate(
        {
            "kind": "chat",
            "request": {"messages": [{"role": "user", "content": "and then?"}]},
            "parent_job_id": str(job_id),
        }
    )
    child = poll_terminal(api, str(producer.enqueue_only(follow_up)))
    assert (child["status"], child["parent_job_id"]) == ("succeeded", str(job_id))
    assert view["parent_job_id"] is None


def test_final_upstream_error_fails_the_job_once_with_the_error_recorded(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    sim.script(
        [
            {
                "status": 400,
                "body": {
                    "error": {
                        "message": "Invalid value for 'temperature'",
                        "type": "invalid_request_error",
                        "param": "temperature",
                        "code": None,
                    }
                },
            }
        ]
    )
    submitted = api.client.post(
        "/v1/jobs",
        json={"kind": "chat", "request": {"messages": [{"role": "user", "content": "x"}]}},
    ).json()
    view = poll_terminal(api, submitted["id"])
    assert view["status"] == "failed"
    assert view["attempt_count"] == 1
    assert view["error"] == {
        "type": "invalid_request_error",
        "message": "Invalid value for 'temperature'",
        "status_code": 400,
    }
    assert count_rows(engine, "attempt", "job_id = :j", j=uuid.UUID(submitted["id"])) == 1
    assert count_rows(engine, "usage", "job_id = :j", j=uuid.UUID(submitted["id"])) == 0


def test_retryable_error_is_retried_until_success(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 503}, {"status": 429, "retry_after": "1"}])
    submitted = api.client.post(
        "/v1/jobs",
        json={"kind": "chat", "request": {"messages": [{"role": "user", "content": "x"}]}},
    ).json()
    view = poll_terminal(api, submitted["id"])
    assert view["status"] == "succeeded", view
    assert view["attempt_count"] == 3
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT number, outcome, status_code, delay_s FROM attempt"
                " WHERE job_id = :j ORDER BY number"
            ),
            {"j": uuid.UUID(submitted["id"])},
        ).all()
    assert [(r.number, r.outcome, r.status_code) for r in rows] == [
        (1, "retry", 503),
        (2, "retry", 429),
        (3, "succeeded", 200),
    ]
    assert rows[1].delay_s >= 1.0  # Retry-After honoured


def test_queued_job_cancelled_never_runs(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    api = start_api(settings)  # no worker yet: the job stays queued
    submitted = api.client.post(
        "/v1/jobs",
        json={"kind": "chat", "request": {"messages": [{"role": "user", "content": "never"}]}},
    ).json()
    cancelled = api.client.post(f"/v1/jobs/{submitted['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    start_worker(settings)
    marker = api.client.post(
        "/v1/jobs",
        json={"kind": "chat", "request": {"messages": [{"role": "user", "content": "after"}]}},
    ).json()
    # Queues are FIFO: once the later job has run, the cancelled one was taken and dropped.
    assert poll_terminal(api, marker["id"])["status"] == "succeeded"
    view = api.client.get(f"/v1/jobs/{submitted['id']}").json()
    assert view["status"] == "cancelled"
    assert view["attempt_count"] == 0
    assert [r["body"]["messages"][0]["content"] for r in sim.requests()] == ["after"]
    again = api.client.post(f"/v1/jobs/{submitted['id']}/cancel")
    assert again.status_code == 409
