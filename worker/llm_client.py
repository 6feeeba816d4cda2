"""HTTP calls to GMI's OpenAI-compatible API; transport errors become ours; never retries."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx2


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
        self,
        base_url: str,
        api_key: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx2.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx2.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    def post(self, path: str, body: bytes) -> UpstreamReply:
        """POST a JSON body; any answer is returned, transport failures raise ours."""
        started = time.monotonic()
        try:
            response = self._client.post(path, content=body)
        except httpx2.TimeoutException as exc:
            raise UpstreamTransportError("timeout", f"{type(exc).__name__}: {exc}") from exc
        except httpx2.TransportError as exc:
            raise UpstreamTransportError("connection", f"{type(exc).__name__}: {exc}") from exc
        return UpstreamReply(
            status_code=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=response.content,
            elapsed_s=time.monotonic() - started,
        )

    def stream(self, path: str, body: bytes, on_chunk: Callable[[bytes], None]) -> UpstreamReply:
        """POST for a server-sent event stream. A 2xx body goes to `on_chunk` as it arrives
        (the reply's content is then empty); any other answer is read whole and returned.
        Transport failures, mid-stream too, raise ours; `on_chunk`'s exceptions propagate."""
        started = time.monotonic()
        try:
            with self._client.stream(
                "POST", path, content=body, headers={"accept": "text/event-stream"}
            ) as response:
                content = b""
                if 200 <= response.status_code < 300:
                    for chunk in response.iter_bytes():
                        on_chunk(chunk)
                else:
                    content = response.read()
        except httpx2.TimeoutException as exc:
            raise UpstreamTransportError("timeout", f"{type(exc).__name__}: {exc}") from exc
        except httpx2.TransportError as exc:
            raise UpstreamTransportError("connection", f"{type(exc).__name__}: {exc}") from exc
        return UpstreamReply(
            status_code=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            content=content,
            elapsed_s=time.monotonic() - started,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()
