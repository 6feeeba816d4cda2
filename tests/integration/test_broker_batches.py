"""A worker's read from Redis takes as many messages as its prefetch allows, in queue order, and
records each as unacknowledged exactly as kombu does, so restoring them works unchanged; its
acknowledgements are written together; with a batch of one it is kombu's own path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Consumer, Message

from tests.conftest import job_message
from worker.broker_batches import take_messages_in_batches
from worker.celery_app import create_celery_app
from worker.queues import JOB_QUEUES, publish_job, queue_depths
from worker.settings import Settings


@pytest.fixture
def app(deployment: Callable[..., Settings]) -> Iterator[Celery]:
    settings = deployment()
    made = create_celery_app(settings, consumer=True)
    try:
        yield made
    finally:
        made.close()
        take_messages_in_batches(1)  # process-wide: the tests after these read as kombu does


@contextmanager
def consuming(
    app: Celery, prefetch: int, no_ack: bool = False
) -> Iterator[tuple[Any, list[Message]]]:
    """A consumer of the job queues with `prefetch` unacknowledged messages at most (0: no
    limit), after its first read; yields its connection and the messages it has received so
    far. The channel closes on exit, as a worker's does when it stops."""
    received: list[Message] = []
    with app.connection_for_read() as connection:
        channel = connection.channel()
        queues = [app.amqp.queues[name] for name in JOB_QUEUES]
        consumer = Consumer(
            channel,
            queues=queues,
            callbacks=[lambda _body, delivered: received.append(delivered)],
            accept=["json"],
            no_ack=no_ack,
        )
        if prefetch:
            consumer.qos(prefetch_count=prefetch)
        with consumer:
            connection.drain_events(timeout=5)
            yield connection, received
        channel.close()


def publish_normal(app: Celery, count: int) -> None:
    for _ in range(count):
        publish_job(app, job_message("normal"))


def key_prefix(app: Celery) -> str:
    return str(app.conf.broker_transport_options["global_keyprefix"])


def unacked(client: redis.Redis, prefix: str) -> dict[str, list[Any]]:
    return {
        tag.decode(): json.loads(entry) for tag, entry in client.hgetall(f"{prefix}unacked").items()
    }


def test_one_read_takes_up_to_the_prefetch_in_queue_order_and_records_each_as_kombu_does(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    normal = [job_message("normal") for _ in range(6)]
    for job in [*normal, job_message("high")]:
        publish_job(app, job)

    with consuming(app, prefetch=5) as (_, received):
        assert len(received) == 5  # one read; kombu alone delivers one
        routing = [delivered.delivery_info["routing_key"] for delivered in received]
        assert routing == ["gmiq.high", *["gmiq.normal"] * 4]
        # The normal queue is first in, first out: its four oldest came.
        bodies = [delivered.decode() for delivered in received[1:]]
        assert [body[0][0]["job_id"] for body in bodies] == [str(m.job_id) for m in normal[:4]]
        entries = unacked(redis_client, prefix)
        assert set(entries) == {delivered.delivery_tag for delivered in received}
        for delivered in received:
            raw, exchange, routing_key = entries[delivered.delivery_tag]
            assert raw == delivered._raw  # type: ignore[attr-defined]
            assert (exchange, routing_key) == (
                delivered.delivery_info["exchange"],
                delivered.delivery_info["routing_key"],
            )
        assert redis_client.zcard(f"{prefix}unacked_index") == 5
        assert queue_depths(redis_client, prefix)["gmiq.normal"] == 2


def zrem_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_zrem", {}).get("calls", 0))


def test_acknowledgements_are_written_together_at_the_next_turn_of_the_loop(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    publish_normal(app, 5)

    with consuming(app, prefetch=8) as (connection, received):
        assert len(received) == 5
        before = zrem_calls(redis_client)
        for delivered in received:
            delivered.ack()
        assert redis_client.hlen(f"{prefix}unacked") == 5  # gathered, not yet written

        with pytest.raises(TimeoutError):  # the queues are empty: one turn, nothing read
            connection.drain_events(timeout=0.2)

        assert redis_client.hlen(f"{prefix}unacked") == 0
        assert redis_client.zcard(f"{prefix}unacked_index") == 0
        assert zrem_calls(redis_client) - before == 1  # kombu alone: one per message


def test_messages_taken_in_a_batch_and_not_acknowledged_go_back_when_the_channel_closes(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    publish_normal(app, 4)

    with consuming(app, prefetch=8) as (_, received):
        assert len(received) == 4
        assert queue_depths(redis_client, prefix)["gmiq.normal"] == 0

    # kombu restores what its channel had not acknowledged, from the entries the batch wrote.
    depths = queue_depths(redis_client, prefix)
    assert (depths["gmiq.normal"], depths["unacked"]) == (4, 0)


def test_a_batch_of_one_is_kombus_own_read(app: Celery, redis_client: redis.Redis) -> None:
    prefix = key_prefix(app)
    take_messages_in_batches(1)
    publish_normal(app, 3)

    with consuming(app, prefetch=8) as (_, received):
        assert len(received) == 1
        assert set(unacked(redis_client, prefix)) == {received[0].delivery_tag}
        before = zrem_calls(redis_client)
        received[0].ack()
        assert zrem_calls(redis_client) - before == 1  # written at once
    assert queue_depths(redis_client, prefix)["gmiq.normal"] == 2
    assert redis_client.hlen(f"{prefix}unacked") == 0


def test_acknowledgements_still_gathered_are_written_when_the_channel_closes(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    publish_normal(app, 3)

    with consuming(app, prefetch=8) as (_, received):
        for delivered in received:
            delivered.ack()
        assert redis_client.hlen(f"{prefix}unacked") == 3

    # Written, not restored: nothing comes back to the queue.
    depths = queue_depths(redis_client, prefix)
    assert (depths["gmiq.normal"], depths["unacked"]) == (0, 0)
    assert redis_client.zcard(f"{prefix}unacked_index") == 0


def test_a_consumer_that_does_not_acknowledge_is_left_no_unacked_entries(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    publish_normal(app, 4)

    with consuming(app, prefetch=8, no_ack=True) as (_, received):
        assert len(received) == 4
        # kombu records nothing for such a consumer; neither does the batch, so nothing
        # would be restored as if it had been lost.
        assert redis_client.hlen(f"{prefix}unacked") == 0
        assert redis_client.zcard(f"{prefix}unacked_index") == 0


def test_without_a_prefetch_limit_one_message_is_read_at_a_time_and_none_is_lost(
    app: Celery, redis_client: redis.Redis
) -> None:
    prefix = key_prefix(app)
    publish_normal(app, 3)

    with consuming(app, prefetch=0) as (_, received):
        assert len(received) == 1
        received[0].ack()
    assert queue_depths(redis_client, prefix)["gmiq.normal"] == 2
    assert redis_client.hlen(f"{prefix}unacked") == 0
