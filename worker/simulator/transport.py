"""The Starlette responses the simulator sends: orjson JSON, SSE, and deliberately broken ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

# Set inside a CutResponse's own task, so the log filter below can tell a deliberate cut
# from an application bug that produces the same uvicorn message.
_cut_on_purpose: ContextVar[bool] = ContextVar("simulator_cut_on_purpose", default=False)
_UNFINISHED_RESPONSE_MESSAGE = "ASGI callable returned without completing response."

JSON_MEDIA_TYPE = "application/json"
SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"


def json_response(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Return `content` serialised with orjson."""
    return Response(orjson.dumps(content), status, headers, JSON_MEDIA_TYPE)


def sse_response(
    frames: list[bytes], delay_s: float, headers: Mapping[str, str] | None = None
) -> StreamingResponse:
    """Stream pre-built SSE frames, optionally pausing between them like a generating model."""

    async def emit() -> AsyncIterator[bytes]:
        for number, frame in enumerate(frames):
            if delay_s and number:
                await asyncio.sleep(delay_s)
            yield frame

    merged = {"cache-control": "no-cache", **(headers or {})}
    return StreamingResponse(emit(), 200, merged, SSE_MEDIA_TYPE)


class CutResponse(Response):
    """Sends the headers and part of a body, then ends without finishing: a connection reset.

    Returning from the ASGI callable before the final body message makes uvicorn close the
    socket, so the client sees a body shorter than its Content-Length (or an unterminated
    chunked stream) exactly as when a proxy drops the connection. uvicorn reports that as an
    error; `DeliberateCutFilter` silences the report for these cuts only.
    """

    def __init__(
        self,
        status: int,
        partial: bytes,
        declared_length: int | None,
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(b"", status, headers, media_type)
        self._partial = partial
        # Drop the Content-Length: 0 Starlette computed for the empty placeholder body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        if declared_length is not None:
            self.raw_headers.append((b"content-length", str(declared_length).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self._partial, "more_body": True})
        _cut_on_purpose.set(True)


class DeliberateCutFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" error for CutResponse only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED_RESPONSE_MESSAGE and _cut_on_purpose.get())


def silence_deliberate_cuts(logger_name: str = "uvicorn.error") -> None:
    """Install DeliberateCutFilter on uvicorn's error logger (once; call after uvicorn's setup)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, DeliberateCutFilter) for existing in logger.filters):
        logger.addFilter(DeliberateCutFilter())


async def wait_for_disconnect(request: Request, timeout_s: float) -> bool:
    """Hold the request until the client goes away or `timeout_s` passes; True if it left."""

    async def disconnected() -> None:
        # Once the body is read, the server's next message for this request is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout_s)
    except TimeoutError:
        return False
    return True
