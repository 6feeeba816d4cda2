"""Scripted and random faults, latency, and concurrency, seen from a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from worker.simulator import SimulatorConfig, SimulatorServer

CHAT = {"model": "Qwen/Qwen3-32B-FP8", "messages": [{"role": "user", "content": "ping"}]}


def auth(server: SimulatorServer) -> dict[str, str]:
    key = server.config.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def chat(
    server: SimulatorServer, timeout: float = 10, headers: dict[str, str] | None = None
) -> httpx2.Response:
    return httpx2.post(
        server.base_url + "chat/completions",
        json=CHAT,
        headers={**auth(server), **(headers or {})},
        timeout=timeout,
    )


@pytest.fixture
def plain_server() -> Iterator[SimulatorServer]:
    """A simulator without auth, for tests that need a config of their own."""
    with SimulatorServer(SimulatorConfig(latency_ms=500)) as server:
        yield server


def test_scripted_429_carries_retry_after_headers_and_error_body(sim: SimulatorServer) -> None:
    sim.script(
        [{"status": 429, "retry_after": "2", "headers": {"x-ratelimit-remaining-requests": "0"}}]
    )

    limited = chat(sim)
    normal = chat(sim)

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert normal.status_code == 200


def test_scripted_answers_are_consumed_in_order(sim: SimulatorServer) -> None:
    custom = {
        "error": {
            "message": "quota",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    sim.script([{"status": 500}, {"status": 200}, {"status": 429, "body": custom}])

    statuses = [chat(sim).status_code for _ in range(4)]

    assert statuses == [500, 200, 429, 200]
    assert len(sim.requests()) == 4
    assert sim.stats()["paths"]["/v1/chat/completions"]["outcomes"] == {
        "200": 2,
        "429": 1,
        "500": 1,
    }


def test_scripted_body_is_returned_verbatim(sim: SimulatorServer) -> None:
    custom = {
        "error": {
            "message": "quota",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    sim.script([{"status": 429, "body": custom}])

    response = chat(sim)

    assert response.json() == custom
    assert "retry-after" not in response.headers


def test_reset_breaks_the_connection_mid_response(sim: SimulatorServer) -> None:
    sim.script([{"kind": "reset"}])

    with pytest.raises(httpx2.RemoteProtocolError):
        chat(sim)
    assert chat(sim).status_code == 200


def test_reset_during_a_stream_breaks_the_stream(sim: SimulatorServer) -> None:
    sim.script([{"kind": "reset"}])

    with pytest.raises(httpx2.TransportError):
        httpx2.post(
            sim.base_url + "chat/completions",
            json={**CHAT, "stream": True},
            headers=auth(sim),
            timeout=10,
        )


def test_hang_makes_a_short_read_timeout_expire(sim: SimulatorServer) -> None:
    sim.script([{"kind": "hang"}])
    started = time.monotonic()

    with pytest.raises(httpx2.ReadTimeout):
        chat(sim, timeout=0.3)

    assert time.monotonic() - started < 3
    assert chat(sim).status_code == 200


def test_malformed_sends_a_200_with_truncated_json(sim: SimulatorServer) -> None:
    sim.script([{"kind": "malformed"}, {"kind": "malformed"}])

    plain = chat(sim)
    streamed = httpx2.post(
        sim.base_url + "chat/completions",
        json={**CHAT, "stream": True},
        headers=auth(sim),
        timeout=10,
    )

    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.content)
    frames = [f for f in streamed.content.split(b"\n\n") if f]
    assert b"[DONE]" not in streamed.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(frames[-1].removeprefix(b"data: "))


def test_delay_ms_and_latency_header_delay_the_answer(sim: SimulatorServer) -> None:
    sim.script([{"status": 200, "delay_ms": 250}])

    started = time.monotonic()
    chat(sim)
    scripted_delay = time.monotonic() - started
    started = time.monotonic()
    chat(sim, headers={"x-sim-latency-ms": "250"})
    header_delay = time.monotonic() - started

    assert scripted_delay >= 0.25
    assert header_delay >= 0.25


def test_fault_header_forces_a_fault_for_one_call(sim: SimulatorServer) -> None:
    assert chat(sim, headers={"x-sim-fault": "503"}).status_code == 503
    with pytest.raises(httpx2.RemoteProtocolError):
        chat(sim, headers={"x-sim-fault": "reset"})
    assert chat(sim, headers={"x-sim-fault": "bogus"}).status_code == 400


def test_invalid_script_is_rejected(sim: SimulatorServer) -> None:
    control = httpx2.Client(base_url=sim.root_url)
    with control:
        bad_kind = control.post("/_sim/script", json={"answers": [{"kind": "explode"}]})
        bad_shape = control.post("/_sim/script", json=[{"status": 429}])

    assert bad_kind.status_code == 400
    assert bad_shape.status_code == 400
    assert sim.stats()["pending_script"] == 0


def outcomes(server: SimulatorServer, calls: int) -> list[str]:
    seen = []
    for _ in range(calls):
        try:
            seen.append(str(chat(server, timeout=0.2).status_code))
        except httpx2.TimeoutException:
            seen.append("hang")
        except httpx2.TransportError:
            seen.append("reset")
    return seen


def test_seeded_fault_rate_is_deterministic_across_instances() -> None:
    def run(seed: int) -> list[str]:
        config = SimulatorConfig(fault_rate=0.5, seed=seed, fault_hang_s=5)
        with SimulatorServer(config) as server:
            return outcomes(server, 20)

    first, second, other_seed = run(7), run(7), run(8)

    assert first == second
    assert first != other_seed
    assert "200" in first
    assert len(set(first)) >= 3, "a 50% fault rate should mix answers with several fault kinds"


def test_latency_delays_every_answer(plain_server: SimulatorServer) -> None:
    started = time.monotonic()
    response = chat(plain_server)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert 0.5 <= elapsed < 5


def test_300_concurrent_calls_with_500ms_latency_overlap(plain_server: SimulatorServer) -> None:
    async def call_all() -> list[int]:
        limits = httpx2.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx2.AsyncClient(limits=limits, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(plain_server.base_url + "chat/completions", json=CHAT)
                    for _ in range(300)
                )
            )
        return [response.status_code for response in responses]

    started = time.monotonic()
    statuses = asyncio.run(call_all())
    elapsed = time.monotonic() - started

    assert statuses == [200] * 300
    # Serialised, 300 calls would take 150 s; overlapping, they take little more than 0.5 s.
    assert elapsed < 5
    stats: dict[str, Any] = plain_server.stats()
    assert stats["paths"]["/v1/chat/completions"]["outcomes"] == {"200": 300}
