"""HTTP calls to GMI's OpenAI-compatible API; transport errors become ours; never retries.

One aiohttp session per worker process, on its call loop, carries every call the process keeps
in flight, plain and streamed."""

from __future__ import annotations

import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp

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
        # Not trust_env: that would read ~/.netrc too; the proxy comes from `proxy_for`.
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
        return await self._call(path, body, None, limits)

    async def stream(
        self,
        path: str,
        body: bytes,
        on_chunk: Callable[[bytes], Awaitable[None]],
        limits: CallLimits | None = None,
    ) -> UpstreamReply:
        """POST for a server-sent event stream. A 2xx body goes to `on_chunk` as it arrives
        (the reply's content is then empty); any other answer is read whole and returned.
        Transport failures, mid-stream too, raise ours; `on_chunk`'s exceptions propagate.
        The whole call's limit covers the stream to its end, however steadily it flows."""
        return await self._call(path, body, on_chunk, limits)

    async def _call(
        self,
        path: str,
        body: bytes,
        on_chunk: Callable[[bytes], Awaitable[None]] | None,
        limits: CallLimits | None,
    ) -> UpstreamReply:
        limits = limits or self.limits
        if limits.total_s <= 0:
            # aiohttp reads a zero timeout as no timeout at all.
            raise _out_of_time(limits)
        timeout = self._timeout if limits == self.limits else _client_timeout(limits)
        started = time.monotonic()
        content = b""
        try:
            async with self._session.post(
                self._prefix + path.lstrip("/"),
                data=body,
                headers=None if on_chunk is None else _STREAM_HEADERS,
                timeout=timeout,
                proxy=self._proxy,
                allow_redirects=False,
            ) as response:
                if on_chunk is None or not 200 <= response.status < 300:
                    content = await response.read()
                else:
                    async for chunk in response.content.iter_any():
                        await on_chunk(chunk)
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


_STREAM_HEADERS = {"accept": "text/event-stream"}


def _default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _client_timeout(limits: CallLimits) -> aiohttp.ClientTimeout:
    # aiohttp's `connect` would also bound the wait for a pooled connection, which counts
    # against the whole call only (`total`); `sock_connect` bounds connecting
    # alone. Without the infinite threshold aiohttp rounds timeouts of 5 s or more up to the
    # loop's next whole second, so a call could outlive its limit by up to a second.
    return aiohttp.ClientTimeout(
        total=limits.total_s,
        sock_connect=limits.connect_s,
        sock_read=limits.read_s,
        ceil_threshold=math.inf,
    )


def _lowercased(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    # Repeated headers joined with ", " (RFC 9110 5.3), so a reply's headers are one dict.
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def proxy_for(url: str) -> str | None:
    """The proxy the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, ...) names for `url`,
    as httpx would pick it (aiohttp's `trust_env` would read ~/.netrc too)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _ran_out(limits: CallLimits, started: float) -> bool:
    return time.monotonic() - started >= limits.total_s


def _out_of_time(limits: CallLimits) -> UpstreamTransportError:
    # Whichever timeout noticed it, the call's own limit is what ended it.
    return UpstreamTransportError(
        "timeout", f"no complete answer within the call's limit of {limits.total_s:g} s"
    )


def _socket_timeout(exc: aiohttp.ServerTimeoutError, limits: CallLimits) -> UpstreamTransportError:
    # Named as httpx names them (the worker's client before this one), so stored attempts'
    # errors keep one vocabulary.
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
