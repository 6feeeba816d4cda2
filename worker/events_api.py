"""`GET /v1/jobs/{id}/events`: follow a job as server-sent events, live or replayed.

The stream replays the job's Redis stream from the start (or after `Last-Event-ID`), then waits
for more, and ends after the `job` event (the final view). A job that ended while nobody
published its final view (cancelled while queued, a Redis outage, an expired stream) gets that
view from Postgres, so every follower's stream ends. Reads are async, so idle followers hold
no thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import redis
import redis.asyncio
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api_contracts.errors import FieldErrorView
from api_contracts.events import FINAL_EVENT
from api_contracts.jobs import TERMINAL_STATUSES
from worker.api import error_response, parse_job_id
from worker.job_events import ENTRY_ID, START, events_key, read_events
from worker.producer import JobProducer
from worker.sse import encode_event

log = logging.getLogger(__name__)

AsyncRedisFactory = Callable[[], redis.asyncio.Redis]
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_KEEP_ALIVE = b": keep-alive\n\n"


def create_events_router(
    producer: JobProducer, connect: AsyncRedisFactory, prefix: str, idle_s: float = 5.0
) -> APIRouter:
    """The events route; `idle_s` is how long a quiet stream waits before checking Postgres
    (and sending a keep-alive comment)."""
    router = APIRouter()

    @router.get("/v1/jobs/{job_id}/events", response_model=None)
    async def follow_job(job_id: str, last_event_id: Annotated[str | None, Header()] = None) -> Any:
        """The job's events as `text/event-stream`; resumable with `Last-Event-ID`."""
        parsed = parse_job_id(job_id)
        after = (last_event_id or START).strip()
        if not ENTRY_ID.match(after):
            message = "must be an event id this stream sent (`<ms>-<seq>`)"
            return error_response(
                422,
                "invalid_request",
                f"Last-Event-ID: {message}",
                [FieldErrorView(field="Last-Event-ID", message=message)],
            )
        status = await run_in_threadpool(producer.status, parsed)
        follower = _Follower(producer, connect, events_key(prefix, parsed), parsed, idle_s)
        stream = follower.events(after, status in TERMINAL_STATUSES)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)

    return router


class _Follower:
    """One follower's read loop over one job's stream."""

    def __init__(
        self,
        producer: JobProducer,
        connect: AsyncRedisFactory,
        key: str,
        job_id: uuid.UUID,
        idle_s: float,
    ) -> None:
        self._producer = producer
        self._connect = connect
        self._key = key
        self._job_id = job_id
        self._block_ms = max(1, int(idle_s * 1000))

    async def events(self, after: str, ended: bool) -> AsyncIterator[bytes]:
        """Frames until the final view; `ended` says the job was already over when asked."""
        client = self._connect()
        try:
            cursor = after
            while True:
                # Once the job is known to be over, only drain what is there: never wait.
                found = await read_events(
                    client, self._key, cursor, None if ended else self._block_ms
                )
                for event in found:
                    cursor = event.id
                    if event.name == FINAL_EVENT:
                        yield await self._final_view(event.id)
                        return
                    yield encode_event(event.name, event.data, event.id)
                if found:
                    continue
                if ended:
                    yield await self._final_view(None)
                    return
                status = await run_in_threadpool(self._producer.status, self._job_id)
                ended = status in TERMINAL_STATUSES
                yield _KEEP_ALIVE
        except (redis.RedisError, OSError) as exc:
            # The follower sees the stream end and reconnects with its Last-Event-ID.
            log.warning("events of job %s unreadable: %s", self._job_id, type(exc).__name__)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _final_view(self, event_id: str | None) -> bytes:
        """The job view as stored now: the worker's final event only marks the moment."""
        view = await run_in_threadpool(self._producer.get, self._job_id)
        return encode_event(FINAL_EVENT, view.model_dump_json().encode(), event_id)
