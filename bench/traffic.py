"""HTTP traffic from one asyncio client with bounded concurrency: aiohttp when it is installed,
else httpx2's AsyncClient. Closed loop (each lane sends its next request when the last one
answered) or open loop at a fixed rate; every run is bounded by a count and a deadline. Given a
first-token marker, bodies are read as they stream and the time until the marker shows is kept."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# (method, url, body) of the i-th request.
Plan = Callable[[int], tuple[str, str, bytes | None]]
# Sends one request and reads its body: the status, and when (time.monotonic()) the first-token
# marker arrived, if one was asked for and came.
Send = Callable[[str, str, bytes | None], Awaitable[tuple[int, float | None]]]


def default_client() -> str:
    """`aiohttp` if importable, else `httpx2`."""
    return "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx2"


@dataclass
class TrafficResult:
    """What one burst of requests did; times are wall-clock seconds (time.time())."""

    client: str
    started_at: float = 0.0
    ended_at: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    # Streamed bodies: seconds from sending to the first-token marker.
    first_token_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    timed_out: bool = False

    @property
    def elapsed_s(self) -> float:
        return max(self.ended_at - self.started_at, 1e-9)

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)


def run_traffic(
    plan: Plan,
    count: int,
    concurrency: int,
    headers: dict[str, str],
    deadline_s: float,
    rate_per_s: float | None = None,
    client: str | None = None,
    first_token: bytes | None = None,
) -> TrafficResult:
    """Send `count` requests over `concurrency` connections; stop at the deadline. With
    `first_token`, each body is read chunk by chunk, timing when that marker first shows."""
    return asyncio.run(
        _run(
            plan,
            count,
            concurrency,
            headers,
            deadline_s,
            rate_per_s,
            client or default_client(),
            first_token,
        )
    )


class _MarkerWatch:
    """Finds the first-token marker in a body read in chunks (it may straddle two)."""

    def __init__(self, marker: bytes | None) -> None:
        self._marker = marker
        self._tail = b""
        self.seen_at: float | None = None

    def feed(self, chunk: bytes) -> None:
        if self._marker is None or self.seen_at is not None:
            return
        window = self._tail + chunk
        if self._marker in window:
            self.seen_at = time.monotonic()
        self._tail = window[-len(self._marker) :]


async def _run(
    plan: Plan,
    count: int,
    concurrency: int,
    headers: dict[str, str],
    deadline_s: float,
    rate_per_s: float | None,
    client: str,
    first_token: bytes | None,
) -> TrafficResult:
    result = TrafficResult(client=client)
    if client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=deadline_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as session:

            async def send_aiohttp(
                method: str, url: str, body: bytes | None
            ) -> tuple[int, float | None]:
                watch = _MarkerWatch(first_token)
                async with session.request(method, url, data=body) as response:
                    if first_token is None:
                        await response.read()
                    else:
                        async for chunk in response.content.iter_any():
                            watch.feed(chunk)
                    return response.status, watch.seen_at

            await _drive(send_aiohttp, plan, count, concurrency, deadline_s, rate_per_s, result)
        return result
    import httpx2

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=deadline_s, headers=headers) as http:

        async def send_httpx2(
            method: str, url: str, body: bytes | None
        ) -> tuple[int, float | None]:
            if first_token is None:
                response = await http.request(method, url, content=body)
                return response.status_code, None
            watch = _MarkerWatch(first_token)
            async with http.stream(method, url, content=body) as response:
                async for chunk in response.aiter_bytes():
                    watch.feed(chunk)
            return response.status_code, watch.seen_at

        await _drive(send_httpx2, plan, count, concurrency, deadline_s, rate_per_s, result)
    return result


async def _drive(
    send: Send,
    plan: Plan,
    count: int,
    concurrency: int,
    deadline_s: float,
    rate_per_s: float | None,
    result: TrafficResult,
) -> None:
    next_index = 0
    start = time.monotonic()
    result.started_at = time.time()

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            sent = time.monotonic()
            if rate_per_s:
                # Open loop: request i leaves at start + i/rate, whatever the answers do, and
                # its latency counts from then: a request that left late because every lane
                # was busy waited on the server too (no coordinated omission).
                sent = start + index / rate_per_s
                await asyncio.sleep(max(0.0, sent - time.monotonic()))
            try:
                status, first_token_at = await send(*plan(index))
            except Exception as exc:  # every failure is counted, none stops the run
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies_s.append(time.monotonic() - sent)
            if first_token_at is not None:
                result.first_token_s.append(first_token_at - sent)
            result.statuses[status] += 1

    lanes = [asyncio.ensure_future(lane()) for _ in range(max(1, min(concurrency, count)))]
    try:
        await asyncio.wait_for(asyncio.gather(*lanes), timeout=deadline_s)
    except TimeoutError:
        result.timed_out = True
    finally:
        result.ended_at = time.time()
