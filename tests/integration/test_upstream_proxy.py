"""The upstream client honours the environment's proxy settings as httpx does by default
(`HTTP_PROXY`, `NO_PROXY`), though it is aiohttp and does not read ~/.netrc."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from tests.conftest import SIM_KEY
from worker.llm_client import AsyncLLMClient
from worker.simulator import SimulatorServer
from worker.timeouts import CallLimits

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
LIMITS = CallLimits(connect_s=5, read_s=30, total_s=60)


class ForwardProxy:
    """A plain-HTTP forward proxy: takes absolute-form requests and replays them upstream."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(self.path)
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                # trust_env=False: this process has HTTP_PROXY pointing here.
                answer = httpx2.post(self.path, content=body, headers=headers, trust_env=False)
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers["content-type"])
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


def _call(sim: SimulatorServer) -> int:
    async def call() -> int:
        client = AsyncLLMClient(sim.base_url, SIM_KEY, LIMITS, max_connections=2)
        try:
            return (await client.post("chat/completions", BODY)).status_code
        finally:
            await client.close()

    return asyncio.run(call())


def test_calls_go_through_the_proxy_the_environment_names(
    sim: SimulatorServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert _call(sim) == 200
    assert proxy.seen == [sim.base_url.rstrip("/") + "/chat/completions"]
    assert len(sim.requests()) == 1


def test_no_proxy_hosts_are_reached_directly(
    sim: SimulatorServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _call(sim) == 200
    assert proxy.seen == []
    assert len(sim.requests()) == 1
