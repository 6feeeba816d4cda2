"""The HTTP client's limits: a per-call read timeout, and a whole-call deadline that holds even
when the upstream keeps sending bytes (the part httpx's own timeouts do not cover)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SIM_KEY
from worker.llm_client import LLMClient, UpstreamTransportError
from worker.simulator import SimulatorConfig, SimulatorServer
from worker.timeouts import CallLimits

CHAT = json.dumps(
    {
        "model": "openai/gpt-5.4-mini",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": True,
    }
).encode()
DEFAULTS = CallLimits(connect_s=5, read_s=30, total_s=60)


@pytest.fixture
def dripping() -> Iterator[SimulatorServer]:
    """An upstream that streams one SSE frame every 150 ms: never silent for long."""
    with SimulatorServer(SimulatorConfig(chunk_delay_ms=150)) as server:
        yield server


def _stream(client: LLMClient, limits: CallLimits | None) -> tuple[float, int]:
    chunks: list[bytes] = []
    started = time.monotonic()
    client.stream("chat/completions", CHAT, chunks.append, limits)
    return time.monotonic() - started, len(chunks)


def test_a_stream_that_never_pauses_long_is_still_cut_at_the_whole_call_limit(
    dripping: SimulatorServer,
) -> None:
    client = LLMClient(dripping.base_url, None, DEFAULTS, max_connections=4)
    try:
        # Unlimited, the stream takes well over a second, with no gap near the read timeout.
        took, chunks = _stream(client, None)
        assert took > 1.2, took
        assert chunks > 8, chunks

        started = time.monotonic()
        with pytest.raises(UpstreamTransportError) as raised:
            _stream(client, CallLimits(connect_s=5, read_s=1.0, total_s=0.6))
        took = time.monotonic() - started
        assert raised.value.error_type == "timeout"
        assert "call's limit of 0.6 s" in str(raised.value)
        assert 0.6 <= took < 0.6 + 0.3, took

        # The connection cut at the deadline is not handed to the next call.
        took, chunks = _stream(client, None)
        assert chunks > 8
    finally:
        client.close()


def test_a_per_call_read_timeout_overrides_the_clients_default(sim: SimulatorServer) -> None:
    client = LLMClient(sim.base_url, SIM_KEY, DEFAULTS, max_connections=4)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    try:
        sim.script([{"status": 200, "delay_ms": 3000}])
        started = time.monotonic()
        with pytest.raises(UpstreamTransportError) as raised:
            client.post("chat/completions", body, CallLimits(connect_s=5, read_s=0.4, total_s=60))
        took = time.monotonic() - started
        assert raised.value.error_type == "timeout"
        assert "ReadTimeout" in str(raised.value)
        assert 0.4 <= took < 1.5, took
        # Without per-call limits the client's own (30 s) apply, and the answer comes.
        sim.script([{"status": 200, "delay_ms": 600}])
        assert client.post("chat/completions", body).status_code == 200
    finally:
        client.close()
