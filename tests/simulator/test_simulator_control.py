"""The /_sim/ control endpoints: the request log, the stats, reset; and config switches."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx2

from worker.simulator import SimulatorConfig, SimulatorServer
from worker.simulator.transport import DeliberateCutFilter


def test_request_log_keeps_bodies_exactly_and_never_the_authorization_header(
    sim: SimulatorServer,
) -> None:
    body = {
        "model": "deepseek-ai/DeepSeek-R1",
        "messages": [{"role": "user", "content": 'ünïcode ✓ and "quotes"'}],
        "temperature": 0.25,
        "metadata": {"job_id": "j-1"},
        "max_tokens": 17,
    }
    headers = {"Authorization": f"Bearer {sim.config.api_key}", "X-Organization-ID": "org-9"}

    httpx2.post(sim.base_url + "chat/completions", json=body, headers=headers)

    (entry,) = sim.requests()
    assert entry["path"] == "/v1/chat/completions"
    assert entry["method"] == "POST"
    assert entry["body"] == body
    assert list(entry["body"]) == list(body), "key order is kept as sent"
    assert entry["headers"]["x-organization-id"] == "org-9"
    assert "authorization" not in {name.lower() for name in entry["headers"]}
    assert str(sim.config.api_key) not in str(entry)
    assert isinstance(entry["received_at"], float)


def test_rejected_and_unparsable_requests_are_logged_too(sim: SimulatorServer) -> None:
    httpx2.post(sim.base_url + "chat/completions", json={"model": "m"})
    httpx2.post(
        sim.base_url + "responses",
        content=b"not json",
        headers={"Authorization": f"Bearer {sim.config.api_key}"},
    )

    entries = sim.requests()

    assert [(e["path"], e["body"]) for e in entries] == [
        ("/v1/chat/completions", {"model": "m"}),
        ("/v1/responses", None),
    ]
    outcomes = {path: counts["outcomes"] for path, counts in sim.stats()["paths"].items()}
    assert outcomes == {"/v1/chat/completions": {"401": 1}, "/v1/responses": {"400": 1}}


def test_stats_count_the_most_model_calls_answered_at_once(sim: SimulatorServer) -> None:
    sim.script([{"status": 200, "delay_ms": 500}] * 5)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": f"Bearer {sim.config.api_key}"}

    def call(_: int) -> int:
        response = httpx2.post(sim.base_url + "chat/completions", json=body, headers=headers)
        return response.status_code

    # Five at once, each held 500 ms: all five are open together.
    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(call, range(5))) == [200] * 5
    assert sim.stats()["in_flight_peak"] == 5
    # One at a time after a reset: never more than one open.
    sim.reset()
    for n in range(3):
        assert call(n) == 200
    assert sim.stats()["in_flight_peak"] == 1


def test_reset_clears_log_stats_and_pending_script(sim: SimulatorServer) -> None:
    sim.script([{"status": 500}, {"status": 500}])
    httpx2.post(
        sim.base_url + "chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {sim.config.api_key}"},
    )

    sim.reset()

    assert sim.requests() == []
    assert sim.stats() == {"total": 0, "paths": {}, "in_flight_peak": 0, "pending_script": 0}


def test_a_401_does_not_consume_a_scripted_answer(sim: SimulatorServer) -> None:
    sim.script([{"status": 503}])

    refused = httpx2.post(sim.base_url + "chat/completions", json={"model": "m"})

    assert refused.status_code == 401
    assert sim.stats()["pending_script"] == 1


def test_responses_endpoint_can_be_switched_off_like_gmi() -> None:
    with SimulatorServer(SimulatorConfig(enable_responses=False)) as server:
        response = httpx2.post(server.base_url + "responses", json={"model": "m", "input": "x"})

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_log_filter_hides_only_deliberate_cuts() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "ASGI callable returned without completing response.",
        None,
        None,
    )

    assert DeliberateCutFilter().filter(record) is True
