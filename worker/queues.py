"""Queue names, publishing a job message, and queue depth read straight from Redis."""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from api_contracts.messages import RUN_JOB_TASK, JobMessage
from worker.task_wire import publisher_origin, task_envelope

QUEUE_BY_PRIORITY: dict[str, str] = {
    "high": "gmiq.high",
    "normal": "gmiq.normal",
    "low": "gmiq.low",
}
# Consumed in this order: a worker takes high before normal before low.
JOB_QUEUES: tuple[str, ...] = ("gmiq.high", "gmiq.normal", "gmiq.low")
# kombu keeps one list per message priority step; we publish without priority, but count all.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


# A publish that cannot reach Redis retries briefly, then raises so the caller can defer it to
# the dispatcher (jobs and webhook deliveries alike).
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
}


def publish_job(app: Celery, message: JobMessage) -> None:
    """Put a job message on its priority's queue; raises if Redis cannot take it.

    The message is Celery's own (`task_wire`), pushed with one LPUSH on a client kept per app:
    what `app.send_task` does, for about half its CPU. Monitoring (Flower, task events, logs) shows
    the job id as the arguments, not the caller's prompt."""
    wire = _wire(app)
    queue = QUEUE_BY_PRIORITY[message.priority]
    wire.client.lpush(wire.key_prefix + queue, _envelope(wire, message, queue))


def publish_jobs(app: Celery, messages: Sequence[JobMessage]) -> None:
    """Put several job messages on their queues in one round trip (see `publish_job`); raises
    if Redis cannot take them, when some may already be queued (a job published twice runs
    once: only one claim of it wins)."""
    if not messages:
        return
    wire = _wire(app)
    pipeline = wire.client.pipeline(transaction=False)
    for message in messages:
        queue = QUEUE_BY_PRIORITY[message.priority]
        pipeline.lpush(wire.key_prefix + queue, _envelope(wire, message, queue))
    pipeline.execute()


def _envelope(wire: _Wire, message: JobMessage, queue: str) -> bytes:
    return task_envelope(
        RUN_JOB_TASK,
        b"[" + message.model_dump_json().encode() + b"]",
        str(uuid.uuid4()),
        queue,
        f"[job {message.job_id}]",
        wire.origin,
        wire.reply_to,
        str(uuid.uuid4()),
    )


@dataclass(frozen=True)
class _Wire:
    client: redis.Redis
    key_prefix: str
    origin: str
    # Celery names a reply queue in every message; no result is ever sent to it here.
    reply_to: str


_wires: weakref.WeakKeyDictionary[Celery, _Wire] = weakref.WeakKeyDictionary()


def _wire(app: Celery) -> _Wire:
    wire = _wires.get(app)
    if wire is None:
        # As Celery retried a publish (PUBLISH_RETRY_POLICY): two more tries, 0.2 and 0.4 s later.
        retry = Retry(ExponentialBackoff(cap=0.4, base=0.1), PUBLISH_RETRY_POLICY["max_retries"])
        client = redis.Redis.from_url(
            redis_client_url(str(app.conf.broker_url)),
            socket_timeout=5,
            socket_connect_timeout=2,
            retry=retry,
        )
        options = app.conf.broker_transport_options or {}
        wire = _Wire(
            client, options.get("global_keyprefix", ""), publisher_origin(), str(uuid.uuid4())
        )
        _wires[app] = wire
    return wire


def warm_publisher(app: Celery) -> None:
    """Do now what Celery does lazily on a process's first publish (import the result backend,
    build its routing and producer pool, connect to Redis), which made the first job a process
    published wait 70 ms longer than the rest; raises if Redis cannot be reached."""
    _wire(app).client.ping()
    app.backend  # noqa: B018 - these properties import and build what they name
    app.amqp.send_task_message  # noqa: B018
    with app.producer_or_acquire() as producer:
        for name in JOB_QUEUES:
            producer.maybe_declare(app.amqp.queues[name])
        _drop_stale_bindings(producer.channel, app.amqp.queues.values())


def _drop_stale_bindings(channel: Any, queues: Any) -> None:
    """Remove bindings that deployments before 2026-11-25 declared: every queue bound under
    the default queue's name, so a hand-made publish to that exchange reached all of them."""
    with channel.conn_or_acquire() as client:
        for queue in queues:
            if queue.routing_key == queue.exchange.name:
                continue
            binding = channel.sep.join([queue.exchange.name, "", queue.name])
            client.srem(channel.keyprefix_queue % queue.exchange.name, binding)


def _reused_client(channel: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    pool = channel.pool
    cached = channel.__dict__.get("_gmiq_client")
    if cached is None or cached.connection_pool is not pool:  # a new pool after a reconnect
        cached = channel._create_client()
        channel.__dict__["_gmiq_client"] = cached
    yield cached


def reuse_broker_clients() -> None:
    """Make kombu's Redis channels reuse one client for publishes and acks.

    `Channel.conn_or_acquire` builds a new redis-py client for every message published and every
    ack (~60 µs of CPU each: a client fills a table of ~200 response callbacks); the connections
    come from the channel's pool either way. One client per channel and pool does the same
    (redis-py clients are thread-safe). Idempotent; called where the publisher is built."""
    channel = kombu_redis.Channel
    if not getattr(channel.conn_or_acquire, "_gmiq_reuses", False):
        reusing = contextmanager(_reused_client)
        reusing._gmiq_reuses = True  # type: ignore[attr-defined]
        channel.conn_or_acquire = reusing  # type: ignore[method-assign,assignment]


def redis_client_url(url: str) -> str:
    """Celery's `redis+socket://` form is `unix://` to redis-py."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://") :]
    return url


def queue_depths(client: redis.Redis, key_prefix: str) -> dict[str, int]:
    """Messages waiting in each job queue, and those taken by workers but not yet acknowledged."""
    depths: dict[str, int] = {}
    for queue in JOB_QUEUES:
        depths[queue] = sum(
            int(client.llen(f"{key_prefix}{queue}{suffix}")) for suffix in _PRIORITY_SUFFIXES
        )
    depths["unacked"] = int(client.hlen(f"{key_prefix}unacked"))
    return depths
