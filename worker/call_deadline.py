"""A whole-call deadline for the synchronous HTTP client.

httpx's timeouts bound each socket operation, not a call: an upstream that sends a byte every
few seconds keeps a call alive forever under any read timeout. Here every connect, read and
write of a call gets at most the time left until the call's deadline, so the call stops at the
deadline, to the socket operation, whatever the upstream does. The deadline lives in a
thread-local because a sync call does all its I/O on the calling thread."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore2
import httpx2

_local = threading.local()


@contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Bound the network operations of the call made inside the block to `seconds` in all."""
    _local.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = None


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """The operation's own timeout, or the time left in the call if that is shorter."""
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _bounded(timeout, httpcore2.ConnectTimeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            _bounded(timeout, httpcore2.ConnectTimeout),
            local_address,
            socket_options,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _bounded(timeout, httpcore2.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx2.Limits, proxy: str | None = None) -> httpx2.HTTPTransport:
    """httpx's own transport (pool, TLS, proxy as it builds them) doing its I/O through the
    deadline-aware backend.

    `HTTPTransport` takes no network backend, so its pool's is replaced; the version is pinned
    in uv.lock and `tests/integration/test_call_limits.py` proves the deadline holds."""
    transport = httpx2.HTTPTransport(limits=limits, proxy=proxy)
    pool = transport._pool
    # Direct, HTTP-proxied and SOCKS pools are all ConnectionPools that open connections
    # (and proxy tunnels) through `_network_backend`.
    assert isinstance(pool, httpcore2.ConnectionPool)
    assert isinstance(pool._network_backend, httpcore2.SyncBackend)
    pool._network_backend = _DeadlineBackend()
    return transport


def proxy_for(url: str) -> str | None:
    """The proxy the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, ...) names for `url`.

    A client given its own transport no longer reads these, so the upstream client asks here."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"
