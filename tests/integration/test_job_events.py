"""Job events are appended to each job's stream in order, in one command per batch, with the
stream's expiry and trimming, on a real Redis."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api_contracts.events import JobStateEvent, TextDeltaEvent
from worker.job_events import JobEventPublisher, NamedEvent, events_key, state_event


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"gmiq-events-test-{secrets.token_hex(4)}"
    yield prefix
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


def _delta(text: str) -> NamedEvent:
    return "text.delta", TextDeltaEvent(attempt=1, index=0, delta=text)


def _stream(client: redis.Redis, prefix: str, job_id: uuid.UUID) -> list[tuple[str, Any]]:
    entries: Any = client.xrange(events_key(prefix, job_id))
    return [(fields[b"type"].decode(), json.loads(fields[b"data"])) for _, fields in entries]


def test_a_batch_appends_each_jobs_events_in_order_and_sets_their_expiry(
    redis_client: redis.Redis, prefix: str
) -> None:
    publisher = JobEventPublisher(redis_client, prefix, maxlen=1000, ttl_s=120)
    first, second, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    running = state_event(JobStateEvent(status="running", attempt=1))
    publisher.publish_many(
        [(first, [running, _delta("a"), _delta("b")]), (idle, []), (second, [running])]
    )
    publisher.publish_many([(first, [_delta("c")])])

    assert _stream(redis_client, prefix, first) == [
        ("state", {"status": "running", "attempt": 1, "error": None}),
        ("text.delta", {"attempt": 1, "index": 0, "delta": "a"}),
        ("text.delta", {"attempt": 1, "index": 0, "delta": "b"}),
        ("text.delta", {"attempt": 1, "index": 0, "delta": "c"}),
    ]
    assert _stream(redis_client, prefix, second) == [
        ("state", {"status": "running", "attempt": 1, "error": None})
    ]
    assert not redis_client.exists(events_key(prefix, idle))
    for job_id in (first, second):
        assert 0 < redis_client.ttl(events_key(prefix, job_id)) <= 120


def test_streams_are_trimmed_to_about_maxlen(redis_client: redis.Redis, prefix: str) -> None:
    publisher = JobEventPublisher(redis_client, prefix, maxlen=10, ttl_s=120)
    job_id = uuid.uuid4()
    for n in range(50):
        publisher.publish_many([(job_id, [_delta(str(m)) for m in range(n * 20, n * 20 + 20)])])
    length = redis_client.xlen(events_key(prefix, job_id))
    # Approximate trimming drops whole nodes (100 entries by default) once past maxlen.
    assert 10 <= length <= 10 + 200
    newest = _stream(redis_client, prefix, job_id)[-1][1]
    assert newest["delta"] == "999"


def test_publishing_survives_redis_forgetting_the_script(
    redis_client: redis.Redis, prefix: str
) -> None:
    publisher = JobEventPublisher(redis_client, prefix, maxlen=1000, ttl_s=120)
    job_id = uuid.uuid4()
    publisher.publish_many([(job_id, [_delta("before")])])
    redis_client.script_flush()  # as after a Redis restart
    publisher.publish_many([(job_id, [_delta("after")])])
    assert [data["delta"] for _, data in _stream(redis_client, prefix, job_id)] == [
        "before",
        "after",
    ]
