"""The upstream client's limits, from aiohttp's timeouts: a per-call read timeout, and a
whole-call deadline that holds even when the upstream keeps sending bytes, streamed or not."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SIM_KEY
from worker.llm_client import AsyncLLMClient, UpstreamTransportError
from worker.simulator import SimulatorConfig, SimulatorServer
from worker.timeouts import CallLimits

CHAT = json.dumps(
    {
        "model": "openai/gpt-5.4-mini",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": True,
    }
).encode()
PLAIN = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
DEFAULTS = CallLimits(connect_s=5, read_s=30, total_s=60)


@pytest.fixture
def dripping() -> Iterator[SimulatorServer]:
    """An upstream that streams one SSE frame every 150 ms: never silent for long."""
    with SimulatorServer(SimulatorConfig(chunk_delay_ms=150)) as server:
        yield server


def test_a_stream_that_never_pauses_long_is_still_cut_at_the_whole_call_limit(
    dripping: SimulatorServer,
) -> None:
    async def scenario() -> None:
        client = AsyncLLMClient(dripping.base_url, None, DEFAULTS, max_connections=1)
        chunks: list[bytes] = []

        async def on_chunk(chunk: bytes) -> None:
            chunks.append(chunk)

        async def stream(limits: CallLimits | None) -> float:
            chunks.clear()
            started = time.monotonic()
            await client.stream("chat/completions", CHAT, on_chunk, limits)
            return time.monotonic() - started

        try:
            # Unlimited, the stream takes well over a second, with no gap near the read timeout.
            took = await stream(None)
            assert took > 1.2, took
            frames = len(chunks)
            assert frames > 8, frames

            started = time.monotonic()
            with pytest.raises(UpstreamTransportError) as raised:
                await stream(CallLimits(connect_s=5, read_s=1.0, total_s=0.6))
            took = time.monotonic() - started
            assert raised.value.error_type == "timeout"
            assert "call's limit of 0.6 s" in str(raised.value)
            assert 0.6 <= took < 0.6 + 0.3, took
            assert 0 < len(chunks) < frames  # it was cut while it flowed

            # The connection cut at the deadline is not handed to the next call.
            await stream(None)
            assert len(chunks) == frames
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_async_plain_call_whose_body_drips_is_still_cut_at_the_whole_call_limit(
    dripping: SimulatorServer,
) -> None:
    # A plain POST that reads the whole body: the streamed answer is just a body that drips.
    async def scenario() -> None:
        client = AsyncLLMClient(dripping.base_url, None, DEFAULTS, max_connections=1)
        try:
            started = time.monotonic()
            reply = await client.post("chat/completions", CHAT)
            took = time.monotonic() - started
            frames = reply.content.count(b"data:")
            # Unlimited, the body takes well over a second, with no gap near the read timeout.
            assert took > 1.2, took
            assert frames > 8, frames

            started = time.monotonic()
            with pytest.raises(UpstreamTransportError) as raised:
                await client.post(
                    "chat/completions", CHAT, CallLimits(connect_s=5, read_s=0.5, total_s=0.8)
                )
            took = time.monotonic() - started
            assert raised.value.error_type == "timeout"
            assert "call's limit of 0.8 s" in str(raised.value)
            assert 0.8 <= took < 0.8 + 0.3, took

            # The connection cut at the deadline is not handed to the next call.
            reply = await client.post("chat/completions", CHAT)
            assert reply.content.count(b"data:") == frames
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_async_per_call_read_timeout_overrides_the_clients_default(
    sim: SimulatorServer,
) -> None:
    async def scenario() -> None:
        client = AsyncLLMClient(sim.base_url, SIM_KEY, DEFAULTS, max_connections=4)
        try:
            sim.script([{"status": 200, "delay_ms": 3000}])
            started = time.monotonic()
            with pytest.raises(UpstreamTransportError) as raised:
                await client.post(
                    "chat/completions", PLAIN, CallLimits(connect_s=5, read_s=0.4, total_s=60)
                )
            took = time.monotonic() - started
            assert raised.value.error_type == "timeout"
            # The read timeout names itself; the whole call's 60 s were far from over.
            assert "ReadTimeout: nothing read for 0.4 s" in str(raised.value), raised.value
            assert 0.4 <= took < 1.5, took
            # Without per-call limits the client's own (30 s) apply, and the answer comes.
            sim.script([{"status": 200, "delay_ms": 600}])
            assert (await client.post("chat/completions", PLAIN)).status_code == 200
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_async_call_to_a_port_nobody_listens_on_is_a_connection_error() -> None:
    # Bound but not listening: connecting is refused, and no other process can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/"

        async def scenario() -> UpstreamTransportError:
            client = AsyncLLMClient(base_url, SIM_KEY, DEFAULTS, max_connections=4)
            try:
                with pytest.raises(UpstreamTransportError) as raised:
                    await client.post("chat/completions", PLAIN)
                return raised.value
            finally:
                await client.close()

        error = asyncio.run(scenario())
    assert error.error_type == "connection"
    assert str(error).startswith("ClientConnectorError: "), error
    assert SIM_KEY not in str(error)
