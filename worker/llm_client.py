"""HTTP calls to GMI's OpenAI-compatible API; transport errors become ours; never retries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.limits = limits
        pool = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx2.Client(
            base_url=base_url,
            headers=headers,
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


def _timeout(limits: CallLimits) -> httpx2.Timeout:
    # Waiting for a pooled connection counts against the whole call too.
    return httpx2.Timeout(limits.read_s, connect=limits.connect_s, pool=limits.total_s)


@contextmanager
def _transport_errors(limits: CallLimits, started: float) -> Iterator[None]:
    """httpx's transport failures as ours; running out of the whole call's time says so."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        if time.monotonic() - started >= limits.total_s:
            message = f"no complete answer within the call's limit of {limits.total_s:g} s"
        else:
            message = f"{type(exc).__name__}: {exc}"
        raise UpstreamTransportError("timeout", message) from exc
    except httpx2.TransportError as exc:
        raise UpstreamTransportError("connection", f"{type(exc).__name__}: {exc}") from exc
