"""Per-job event streams on Redis Streams: workers append (XADD), followers read after an id.

One stream per job under the deployment's `redis_prefix`, trimmed to about `maxlen` entries and
expiring `ttl_s` after its last event: live progress is a convenience, Postgres is the record,
so a follower of an expired stream gets the final view from the database instead. A Redis
outage never fails a job: publishing logs and moves on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from pydantic import BaseModel

from api_contracts.events import (
    JobStateEvent,
    TextDeltaEvent,
    ToolCallDeltaEvent,
    ToolCallStartedEvent,
)
from worker.stream_parsing import StreamUpdate

log = logging.getLogger(__name__)

# `Last-Event-ID` must name a stream entry: `<ms>-<seq>`.
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
START = "0-0"
_READ_BATCH = 500

NamedEvent = tuple[str, BaseModel]

# Appends a batch in one command: KEYS are the jobs' streams; ARGV is maxlen, ttl, then per
# stream its number of events and each event's type and data. A pipeline of XADD and EXPIRE
# per stream cost ~15 us of a worker's CPU per event (packing each command, parsing each
# reply: half of a claim's time at 1,000 in flight); this costs ~4.
_APPEND = """
local maxlen, ttl, a = ARGV[1], ARGV[2], 3
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'type', ARGV[a], 'data', ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""


def events_key(prefix: str, job_id: uuid.UUID) -> str:
    """The Redis key of a job's event stream."""
    return f"{prefix}:events:{job_id}"


def update_event(update: StreamUpdate, attempt: int) -> NamedEvent:
    """The follower's event for a stream update."""
    if update.type == "tool_call.started":
        return update.type, ToolCallStartedEvent(
            attempt=attempt,
            index=update.index,
            call_index=update.call_index,
            call_id=update.call_id,
            name=update.name,
            type=update.call_type or "function",
        )
    if update.type == "tool_call.delta":
        return update.type, ToolCallDeltaEvent(
            attempt=attempt, index=update.index, call_index=update.call_index, delta=update.delta
        )
    return update.type, TextDeltaEvent(attempt=attempt, index=update.index, delta=update.delta)


def state_event(event: JobStateEvent) -> NamedEvent:
    """A state change, named for the stream."""
    return "state", event


class JobEventPublisher:
    """Appends events to job streams; one script call (one round trip) per batch.

    After a Redis failure it drops events for `pause_s`: a dead Redis must not cost every
    streamed chunk a socket timeout, nor fill the log.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        maxlen: int,
        ttl_s: int,
        pause_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._pause_s = pause_s
        self._clock = clock
        self._paused_until = 0.0
        self._append = client.register_script(_APPEND)

    def publish(self, job_id: uuid.UUID, events: Sequence[NamedEvent]) -> None:
        """Append the events in order; Redis errors are logged, never raised."""
        self.publish_many([(job_id, events)])

    def publish_many(self, batches: Sequence[tuple[uuid.UUID, Sequence[NamedEvent]]]) -> None:
        """`publish` for several jobs in one round trip."""
        batches = [(job_id, events) for job_id, events in batches if events]
        if not batches or self._clock() < self._paused_until:
            return
        keys: list[str] = []
        args: list[str | int] = [self._maxlen, self._ttl_s]
        for job_id, events in batches:
            keys.append(events_key(self._prefix, job_id))
            args.append(len(events))
            for name, body in events:
                args += (name, body.model_dump_json())
        try:
            self._append(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            self._paused_until = self._clock() + self._pause_s
            log.warning(
                "job events not published for %gs: %s (jobs %s)",
                self._pause_s,
                type(exc).__name__,
                ", ".join(str(job_id) for job_id, _ in batches[:3]),
            )

    def ping(self) -> None:
        """Connect now (see `WorkerRuntime.warm`)."""
        self._client.ping()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


@dataclass(frozen=True)
class StoredEvent:
    """One entry of a job's stream: its id, event name and JSON data."""

    id: str
    name: str
    data: bytes


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_events(
    client: redis.asyncio.Redis, key: str, after: str, block_ms: int | None
) -> list[StoredEvent]:
    """Entries after `after` (exclusive), waiting up to `block_ms` for one (None: no wait)."""
    answer: Any = await client.xread({key: after}, count=_READ_BATCH, block=block_ms)
    found: list[StoredEvent] = []
    for _, entries in answer or []:
        for entry_id, fields in entries:
            name = fields.get(b"type", b"")
            data = fields.get(b"data", b"null")
            found.append(StoredEvent(_text(entry_id), _text(name), bytes(data)))
    return found
