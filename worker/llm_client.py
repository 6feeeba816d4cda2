"""HTTP calls to GMI's OpenAI-compatible API; transport errors become ours; never retries.

Two clients, one behaviour: `LLMClient` (httpx) serves the worker's threads, streamed calls
included; `AsyncLLMClient` (aiohttp) serves the plain calls a worker process keeps in flight on
its event loop."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import httpx2

from worker.call_deadline import call_deadline, deadline_transport, proxy_for
from worker.timeouts import CallLimits


@dataclass(frozen=True)
class UpstreamReply:
    """An HTTP answer, whatever its status."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    elapsed_s: float


class UpstreamTransportError(Exception):
    """No complete HTTP answer: connection refused or reset, timeout, body cut off."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class LLMClient:
    """One pooled client per worker process, shared by all its threads."""

    def __init__(
        self, base_url: str, api_key: str | None, limits: CallLimits, max_connections: int
    ) -> None:
        self.limits = limits
        pool = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx2.Client(
            base_url=base_url,
            headers=_default_headers(api_key),
            transport=deadline_transport(pool, proxy_for(base_url)),
            follow_redirects=False,
        )

    def post(self, path: str, body: bytes, limits: CallLimits | None = None) -> UpstreamReply:
        """POST a JSON body; any answer is returned, transport failures raise ours."""
        limits = limits or self.limits
        started = time.monotonic()
        with _transport_errors(limits, started), call_deadline(limits.total_s):
            response = self._client.post(path, content=body, timeout=_timeout(limits))
        return UpstreamReply(
            status_code=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=response.content,
            elapsed_s=time.monotonic() - started,
        )

    def stream(
        self,
        path: str,
        body: bytes,
        on_chunk: Callable[[bytes], None],
        limits: CallLimits | None = None,
    ) -> UpstreamReply:
        """POST for a server-sent event stream. A 2xx body goes to `on_chunk` as it arrives
        (the reply's content is then empty); any other answer is read whole and returned.
        Transport failures, mid-stream too, raise ours; `on_chunk`'s exceptions propagate."""
        limits = limits or self.limits
        started = time.monotonic()
        with (
            _transport_errors(limits, started),
            call_deadline(limits.total_s),
            self._client.stream(
                "POST",
                path,
                content=body,
                headers={"accept": "text/event-stream"},
                timeout=_timeout(limits),
            ) as response,
        ):
            content = b""
            if 200 <= response.status_code < 300:
                for chunk in response.iter_bytes():
                    on_chunk(chunk)
            else:
                content = response.read()
        return UpstreamReply(
            status_code=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=content,
            elapsed_s=time.monotonic() - started,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()


class AsyncLLMClient:
    """One pooled aiohttp session per worker process, used from its call loop only.

    Build it inside the running event loop that will use it: aiohttp binds the session and its
    connections to that loop (and refuses to be built outside one)."""

    def __init__(
        self, base_url: str, api_key: str | None, limits: CallLimits, max_connections: int
    ) -> None:
        self.limits = limits
        self._timeout = _client_timeout(limits)
        # httpx reads a base URL as a directory whatever its last character; so do we.
        self._prefix = base_url if base_url.endswith("/") else base_url + "/"
        # Not trust_env: that would read ~/.netrc too, which the sync client does not.
        self._proxy = proxy_for(base_url)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            headers=_default_headers(api_key),
            timeout=self._timeout,
            # GMI's API keeps no state in cookies; a jar would cost every call a lookup and
            # carry one job's cookies into the next.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def post(self, path: str, body: bytes, limits: CallLimits | None = None) -> UpstreamReply:
        """POST a JSON body; any answer is returned, transport failures raise ours."""
        limits = limits or self.limits
        if limits.total_s <= 0:
            # aiohttp reads a zero timeout as no timeout at all.
            raise _out_of_time(limits)
        timeout = self._timeout if limits == self.limits else _client_timeout(limits)
        started = time.monotonic()
        try:
            async with self._session.post(
                self._prefix + path.lstrip("/"),
                data=body,
                timeout=timeout,
                proxy=self._proxy,
                allow_redirects=False,
            ) as response:
                content = await response.read()
        except TimeoutError as exc:
            # The whole call's timer raises a bare TimeoutError; aiohttp's connect and read
            # timeouts raise its ServerTimeoutError, and may fire at the limit too.
            if not isinstance(exc, aiohttp.ServerTimeoutError) or _ran_out(limits, started):
                raise _out_of_time(limits) from exc
            raise _socket_timeout(exc, limits) from exc
        except aiohttp.ClientError as exc:
            raise _failed("connection", exc) from exc
        return UpstreamReply(
            status_code=response.status,
            headers=_lowercased(response.headers.items()),
            content=content,
            elapsed_s=time.monotonic() - started,
        )

    async def close(self) -> None:
        """Close pooled connections."""
        await self._session.close()


def _default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _timeout(limits: CallLimits) -> httpx2.Timeout:
    # Waiting for a pooled connection counts against the whole call too.
    return httpx2.Timeout(limits.read_s, connect=limits.connect_s, pool=limits.total_s)


def _client_timeout(limits: CallLimits) -> aiohttp.ClientTimeout:
    # aiohttp's `connect` would also bound the wait for a pooled connection, which counts
    # against the whole call only (as in the sync client); `sock_connect` bounds connecting
    # alone. Without the infinite threshold aiohttp rounds timeouts of 5 s or more up to the
    # loop's next whole second, so a call could outlive its limit by up to a second.
    return aiohttp.ClientTimeout(
        total=limits.total_s,
        sock_connect=limits.connect_s,
        sock_read=limits.read_s,
        ceil_threshold=math.inf,
    )


def _lowercased(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    # Repeated headers joined as httpx joins them, so both clients give the same reply.
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


@contextmanager
def _transport_errors(limits: CallLimits, started: float) -> Iterator[None]:
    """httpx's transport failures as ours; running out of the whole call's time says so."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        if _ran_out(limits, started):
            raise _out_of_time(limits) from exc
        raise _failed("timeout", exc) from exc
    except httpx2.TransportError as exc:
        raise _failed("connection", exc) from exc


def _ran_out(limits: CallLimits, started: float) -> bool:
    return time.monotonic() - started >= limits.total_s


def _out_of_time(limits: CallLimits) -> UpstreamTransportError:
    # Whichever timeout noticed it, the call's own limit is what ended it.
    return UpstreamTransportError(
        "timeout", f"no complete answer within the call's limit of {limits.total_s:g} s"
    )


def _socket_timeout(exc: aiohttp.ServerTimeoutError, limits: CallLimits) -> UpstreamTransportError:
    # Named as httpx names them, so an attempt's error reads the same from either client.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        message = f"ConnectTimeout: no connection within {limits.connect_s:g} s"
    else:
        message = f"ReadTimeout: nothing read for {limits.read_s:g} s"
    return UpstreamTransportError("timeout", message)


def _failed(error_type: str, exc: Exception) -> UpstreamTransportError:
    # The message is stored in the job's error and served to callers: a proxy URL in it must
    # not carry its password (aiohttp's proxy errors print the proxy URL whole).
    message = _USERINFO.sub(r"\1", f"{type(exc).__name__}: {exc}")
    return UpstreamTransportError(error_type, message)


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
