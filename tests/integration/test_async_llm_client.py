"""The upstream client against the simulator: replies and errors, its headers and URLs, streamed
answers, and many calls in flight on one pool."""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import SIM_KEY
from worker.llm_client import AsyncLLMClient, UpstreamReply, UpstreamTransportError
from worker.simulator import SimulatorConfig, SimulatorServer
from worker.timeouts import CallLimits

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
LIMITS = CallLimits(connect_s=5, read_s=30, total_s=60)
LATENCY_MS = 50


@pytest.fixture
def slow_sim() -> Iterator[SimulatorServer]:
    """A simulator that takes a while over every answer, so concurrent calls overlap."""
    with SimulatorServer(SimulatorConfig(api_key=SIM_KEY, latency_ms=LATENCY_MS)) as server:
        yield server


def _post_once(
    base_url: str, path: str = "chat/completions", api_key: str | None = SIM_KEY
) -> UpstreamReply:
    async def call() -> UpstreamReply:
        client = AsyncLLMClient(base_url, api_key, LIMITS, max_connections=2)
        try:
            return await client.post(path, BODY)
        finally:
            await client.close()

    return asyncio.run(call())


def _fail_once(base_url: str, limits: CallLimits = LIMITS) -> UpstreamTransportError:
    async def call() -> UpstreamTransportError:
        client = AsyncLLMClient(base_url, SIM_KEY, LIMITS, max_connections=2)
        try:
            with pytest.raises(UpstreamTransportError) as raised:
                await client.post("chat/completions", BODY, limits)
            return raised.value
        finally:
            await client.close()

    return asyncio.run(call())


def test_any_status_comes_back_as_a_reply_with_lowercased_headers(sim: SimulatorServer) -> None:
    sim.script([{"status": 429, "retry_after": "7", "headers": {"X-Upstream-Note": "busy"}}])
    reply = _post_once(sim.base_url)
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "7"
    assert reply.headers["x-upstream-note"] == "busy"
    assert all(name == name.lower() for name in reply.headers)
    assert "error" in json.loads(reply.content)
    assert reply.elapsed_s > 0


def test_a_redirect_is_returned_not_followed(sim: SimulatorServer) -> None:
    sim.script([{"status": 307, "headers": {"Location": "/v1/elsewhere"}}])
    reply = _post_once(sim.base_url)
    assert reply.status_code == 307
    assert reply.headers["location"] == "/v1/elsewhere"
    assert [r["path"] for r in sim.requests()] == ["/v1/chat/completions"]


def test_the_api_key_goes_as_a_bearer_token_beside_the_json_headers(
    sim: SimulatorServer,
) -> None:
    assert _post_once(sim.base_url).status_code == 200
    (request,) = sim.requests()  # The simulator keeps no Authorization header in its log.
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["accept"] == "application/json"
    assert request["body"] == json.loads(BODY)
    # The simulator wants the key: without it, or with another, the call is refused.
    assert _post_once(sim.base_url, api_key=None).status_code == 401
    assert _post_once(sim.base_url, api_key="not-the-key").status_code == 401


@pytest.mark.parametrize("path", ["chat/completions", "/chat/completions"])
@pytest.mark.parametrize("trailing_slash", [True, False], ids=["slash", "no-slash"])
def test_the_path_joins_the_base_urls_path_as_httpx_joins_it(
    sim: SimulatorServer, path: str, trailing_slash: bool
) -> None:
    base_url = sim.base_url if trailing_slash else sim.base_url.rstrip("/")
    assert _post_once(base_url, path).status_code == 200
    assert [r["path"] for r in sim.requests()] == ["/v1/chat/completions"]


STREAMED = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()


def _stream_once(
    base_url: str, on_chunk_error: Exception | None = None
) -> tuple[UpstreamReply | Exception, list[bytes]]:
    chunks: list[bytes] = []

    async def on_chunk(chunk: bytes) -> None:
        chunks.append(chunk)
        if on_chunk_error is not None:
            raise on_chunk_error

    async def call() -> UpstreamReply | Exception:
        client = AsyncLLMClient(base_url, SIM_KEY, LIMITS, max_connections=2)
        try:
            try:
                return await client.stream("chat/completions", STREAMED, on_chunk)
            except Exception as exc:
                return exc
        finally:
            await client.close()

    return asyncio.run(call()), chunks


def test_a_streamed_answer_goes_to_the_reader_as_it_arrives(sim: SimulatorServer) -> None:
    reply, chunks = _stream_once(sim.base_url)
    assert isinstance(reply, UpstreamReply)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.content == b""  # the body went to the reader
    frames = b"".join(chunks).split(b"\n\n")
    assert frames[0].startswith(b"data: {")
    assert b"data: [DONE]" in frames
    (request,) = sim.requests()
    assert request["headers"]["accept"] == "text/event-stream"


def test_a_streamed_call_refused_comes_back_whole_and_reads_nothing(sim: SimulatorServer) -> None:
    sim.script([{"status": 429, "retry_after": "3"}])
    reply, chunks = _stream_once(sim.base_url)
    assert isinstance(reply, UpstreamReply)
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "3"
    assert "error" in json.loads(reply.content)
    assert chunks == []


def test_what_the_stream_reader_raises_ends_the_call_as_it_is(sim: SimulatorServer) -> None:
    stop = LookupError("the reader's own")
    error, chunks = _stream_once(sim.base_url, stop)
    assert error is stop
    assert len(chunks) == 1


def test_a_stream_cut_midway_is_a_connection_error(sim: SimulatorServer) -> None:
    sim.script([{"kind": "reset"}])
    error, chunks = _stream_once(sim.base_url)
    assert chunks  # some of the stream came before the cut
    assert isinstance(error, UpstreamTransportError)
    assert error.error_type == "connection"


def test_a_connection_cut_mid_answer_is_a_connection_error(sim: SimulatorServer) -> None:
    sim.script([{"kind": "reset"}])
    error = _fail_once(sim.base_url)
    assert error.error_type == "connection"
    assert SIM_KEY not in str(error)


def test_a_call_with_no_time_left_never_reaches_the_upstream(sim: SimulatorServer) -> None:
    # aiohttp would take a zero limit for none at all.
    error = _fail_once(sim.base_url, CallLimits(connect_s=0, read_s=0, total_s=0))
    assert error.error_type == "timeout"
    assert str(error) == "no complete answer within the call's limit of 0 s"
    assert sim.requests() == []


def test_waiting_for_a_pooled_connection_counts_against_the_whole_call_only(
    sim: SimulatorServer,
) -> None:
    """The connect timeout bounds connecting; the wait for the pool's one connection, far
    longer, is bounded by the whole call's limit alone."""

    async def behind_a_slow_call(limits: CallLimits) -> tuple[int, UpstreamReply | BaseException]:
        client = AsyncLLMClient(sim.base_url, SIM_KEY, LIMITS, max_connections=1)
        try:
            slow = asyncio.create_task(client.post("chat/completions", BODY))
            # Created second, so it asks the pool second and waits for the slow call's answer.
            queued = asyncio.create_task(client.post("chat/completions", BODY, limits))
            first = await slow
            waited = await asyncio.gather(queued, return_exceptions=True)
            return first.status_code, waited[0]
        finally:
            await client.close()

    sim.script([{"status": 200, "delay_ms": 800}])
    first, waited = asyncio.run(
        behind_a_slow_call(CallLimits(connect_s=0.2, read_s=30, total_s=10))
    )
    assert first == 200
    assert isinstance(waited, UpstreamReply)
    assert waited.status_code == 200
    assert waited.elapsed_s > 0.6, waited.elapsed_s

    sim.script([{"status": 200, "delay_ms": 800}])
    first, waited = asyncio.run(
        behind_a_slow_call(CallLimits(connect_s=0.2, read_s=30, total_s=0.3))
    )
    assert first == 200
    assert isinstance(waited, UpstreamTransportError)
    assert waited.error_type == "timeout"
    assert str(waited) == "no complete answer within the call's limit of 0.3 s"


def test_two_hundred_calls_at_once_all_succeed_on_a_pool_of_twenty(
    slow_sim: SimulatorServer,
) -> None:
    calls, pool = 200, 20

    def connections_to_sim() -> set[tuple[str, int]]:
        return {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == slow_sim.port
        }

    async def scenario() -> tuple[list[int], float, int]:
        before = connections_to_sim()  # The simulator's own control client holds one.
        client = AsyncLLMClient(slow_sim.base_url, SIM_KEY, LIMITS, max_connections=pool)
        try:
            started = time.monotonic()
            replies = await asyncio.gather(
                *(client.post("chat/completions", BODY) for _ in range(calls))
            )
            took = time.monotonic() - started
            # Kept alive for the next calls, so still there to count.
            opened = len(connections_to_sim() - before)
            return [reply.status_code for reply in replies], took, opened
        finally:
            await client.close()

    statuses, took, opened = asyncio.run(scenario())
    assert statuses == [200] * calls
    assert len(slow_sim.requests()) == calls
    assert 0 < opened <= pool, opened
    # No more than `pool` calls were ever in flight: they went in at least calls/pool waves.
    assert took >= (calls / pool) * LATENCY_MS / 1000, took


class _RefusingProxy(socketserver.BaseRequestHandler):
    """Answers every CONNECT with 407, as a proxy rejecting its credentials does."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
        )


def test_a_proxy_password_never_reaches_the_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RefusingProxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        port = proxy.server_address[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://gmiq:s3cret-pw@127.0.0.1:{port}")

        async def scenario() -> str:
            client = AsyncLLMClient("https://upstream.invalid/v1/", None, LIMITS, 2)
            try:
                with pytest.raises(UpstreamTransportError) as raised:
                    await client.post("chat/completions", b"{}")
                return str(raised.value)
            finally:
                await client.close()

        message = asyncio.run(scenario())
        proxy.shutdown()
    # aiohttp's own text names the proxy URL, credentials included; ours keeps the rest.
    assert message.startswith("ClientHttpProxyError: 407"), message
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
