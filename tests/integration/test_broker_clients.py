"""Publishing reuses one Redis client per kombu channel, the messages still land on the
deployment's prefixed queues, and what monitoring sees of a job message is its id."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import redis

from tests.conftest import job_message
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.queues import publish_job, queue_depths, reuse_broker_clients, warm_publisher
from worker.settings import Settings


def test_publishes_share_one_client_and_reach_the_prefixed_queues(
    deployment: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = deployment()
    app = create_celery_app(settings)
    reuse_broker_clients()
    reuse_broker_clients()  # idempotent
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second
                assert first.global_keyprefix == broker_key_prefix(settings)
        for priority in ("high", "normal", "normal"):
            publish_job(app, job_message(priority))
    finally:
        app.close()
    depths = queue_depths(redis_client, broker_key_prefix(settings))
    assert (depths["gmiq.high"], depths["gmiq.normal"], depths["gmiq.low"]) == (1, 2, 0)


def test_a_job_message_shows_monitoring_its_id_not_the_prompt(
    deployment: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = deployment()
    app = create_celery_app(settings)
    secret_prompt = f"confidential-{uuid.uuid4().hex}"
    job = job_message("normal").model_copy(
        update={"request": {"messages": [{"role": "user", "content": secret_prompt}]}}
    )
    try:
        publish_job(app, job)
    finally:
        app.close()
    (raw,) = redis_client.lrange(f"{broker_key_prefix(settings)}gmiq.normal", 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["argsrepr"] == f"[job {job.job_id}]"
    assert secret_prompt not in json.dumps(envelope["headers"])
    # The prompt travels only in the body, which the worker needs.
    args, _, _ = json.loads(base64.b64decode(envelope["body"]))
    assert args[0]["request"]["messages"][0]["content"] == secret_prompt


def test_a_message_published_to_a_queues_routing_key_reaches_that_queue_alone(
    deployment: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = deployment()
    prefix = broker_key_prefix(settings)
    bindings = f"{prefix}_kombu.binding.gmiq.normal"
    # What a deployment from before the fix left behind: gmiq.high bound under gmiq.normal.
    redis_client.sadd(bindings, "gmiq.normal\x06\x16\x06\x16gmiq.high")
    app = create_celery_app(settings)
    reuse_broker_clients()
    try:
        warm_publisher(app)
        with app.producer_or_acquire() as producer:
            for key in ("gmiq.low", "gmiq.normal"):
                producer.publish({"by": "hand"}, exchange="gmiq.normal", routing_key=key)
    finally:
        app.close()
    depths = queue_depths(redis_client, prefix)
    assert (depths["gmiq.high"], depths["gmiq.normal"], depths["gmiq.low"]) == (0, 1, 1)
    assert redis_client.llen(f"{prefix}gmiq.webhooks") == 0
