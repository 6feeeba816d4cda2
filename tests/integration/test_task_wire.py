"""A job message published by `publish_job` is the message Celery's `send_task` would have
published, field by field (this is the test that fails first when a Celery or kombu upgrade
changes their format), and a Redis that cannot be reached makes the publish fail fast."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from api_contracts.messages import RUN_JOB_TASK
from tests.conftest import job_message
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.queues import QUEUE_BY_PRIORITY, publish_job
from worker.settings import Settings


def _comparable(raw: bytes) -> tuple[dict[str, Any], Any]:
    """The envelope with its per-message ids checked and blanked, and its decoded body."""
    envelope = json.loads(raw)
    body = json.loads(base64.b64decode(envelope.pop("body")))
    headers, properties = envelope["headers"], envelope["properties"]
    task_id = headers["id"]
    uuid.UUID(task_id)
    assert headers["root_id"] == properties["correlation_id"] == task_id
    for part, name in [
        (headers, "id"),
        (headers, "root_id"),
        (properties, "correlation_id"),
        (properties, "delivery_tag"),
        (properties, "reply_to"),
    ]:
        uuid.UUID(part[name])
        part[name] = "<uuid>"
    return envelope, body


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_a_job_message_is_the_one_celery_would_publish(
    deployment: Callable[..., Settings], redis_client: redis.Redis, priority: str
) -> None:
    settings = deployment()
    app = create_celery_app(settings)
    job = job_message(priority).model_copy(update={"metadata": {"team": "ü", "n": [1, 2.5]}})
    queue = QUEUE_BY_PRIORITY[priority]
    try:
        publish_job(app, job)
        app.send_task(
            RUN_JOB_TASK,
            args=[job.model_dump(mode="json")],
            argsrepr=f"[job {job.job_id}]",
            kwargsrepr="{}",
            queue=queue,
        )
    finally:
        app.close()
    # LPUSH puts the newest first: Celery's, then ours.
    celerys, ours = redis_client.lrange(f"{broker_key_prefix(settings)}{queue}", 0, -1)
    ours_envelope, ours_body = _comparable(ours)
    celerys_envelope, celerys_body = _comparable(celerys)
    assert ours_envelope == celerys_envelope
    assert ours_body == celerys_body
    assert ours_body[0] == [job.model_dump(mode="json")]


def test_a_publish_to_a_redis_nobody_serves_fails_within_a_second_or_two(
    deployment: Callable[..., Settings],
) -> None:
    # Bound but not listening: connecting is refused, and no other process can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        settings = deployment(redis_url=f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        app = create_celery_app(settings)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            publish_job(app, job_message())
        took = time.monotonic() - started
        app.close()
    # Two more tries after 0.2 and 0.4 s, as Celery's publish retried.
    assert 0.5 <= took < 2.0, took
