"""The Celery app: Redis broker, late acks, no result backend (Postgres is the record)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.transport import redis as kombu_redis
from sqlalchemy.exc import OperationalError

from worker.broker_batches import LOST_CHANNEL_ERRORS, take_messages_in_batches
from worker.queues import JOB_QUEUES
from worker.settings import Settings
from worker.webhooks import WEBHOOK_QUEUE

log = logging.getLogger(__name__)


def _tolerant(method: Callable[..., None], what: str) -> Callable[..., None]:
    def call(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except LOST_CHANNEL_ERRORS as exc:
            log.warning("could not %s after losing Redis: %r", what, exc)

    call._gmiq_tolerant = True  # type: ignore[attr-defined]
    return call


def _tolerate_lost_channel() -> None:
    """Keep the worker consuming across a Redis outage.

    When Redis goes away, kombu's Redis channel tries to put unacknowledged messages back on
    their queues as it closes, and after the reconnect it acknowledges messages of tasks that
    were running on the old channel; both go through the closed channel's client and raise
    `AttributeError` (`'NoneType' object has no attribute 'hostname'` / `'client'`, the shape of
    celery/kombu#582 and #970), which Celery treats as an unrecoverable error and stops
    consuming. Neither loses anything if skipped: the messages stay in the `unacked` hash,
    where kombu restores them after `visibility_timeout`, and a redelivered message of a job
    that Postgres already recorded is a no-op. So these failures are logged, not fatal."""
    qos = kombu_redis.QoS
    for name, what in (
        ("restore_unacked", "restore unacknowledged messages"),
        ("ack", "acknowledge a message"),
        ("reject", "reject a message"),
    ):
        method = getattr(qos, name)
        if not getattr(method, "_gmiq_tolerant", False):
            setattr(qos, name, _tolerant(method, what))


# A database outage must not eat a message: Celery republishes it with backoff until Postgres
# answers again. The job and the webhook task both take these options; the job task raises
# only if its message is malformed, since its claim waits out an outage on the call loop (its
# message held restorable meanwhile, `broker_batches.hold_ack`).
RETRY_WHILE_DATABASE_DOWN: dict[str, Any] = {
    "acks_late": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
}


def broker_key_prefix(settings: Settings) -> str:
    """Every broker key gets this prefix, so deployments and test runs sharing a Redis never mix."""
    return f"{settings.redis_prefix}:"


def restore_sweep_s(visibility_timeout_s: float) -> float:
    """How often each worker looks for messages whose consumer died before acknowledging them.

    kombu scans only on every 10th tick of a 10 s timer by default, so a message a dead worker
    had taken waited up to 100 s past its visibility timeout; a scan is one ZRANGE, so scan
    several times per visibility timeout, at most every 10 s and at least every second."""
    return min(10.0, max(1.0, visibility_timeout_s / 4))


def create_celery_app(settings: Settings, consumer: bool = False) -> Celery:
    """A configured app; the task module registers itself on import. `consumer`: this process
    is a worker, whose Redis channels take messages in batches (`worker.broker_batches`); the
    change is process-wide, so producers embedded in other services do not make it."""
    if consumer:
        # Batches first: the tolerance wraps the acknowledgement they install.
        take_messages_in_batches(settings.broker_batch)
    _tolerate_lost_channel()
    app = Celery(
        "gmiq", broker=settings.broker_url, include=["worker.tasks", "worker.webhook_tasks"]
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # Each queue bound by its own name: without a routing key Celery binds every queue to
        # the default exchange under the default queue's name, so a message published to that
        # exchange by hand would reach all four. (Celery's own publishes go straight to the
        # queue by name either way.) `queues.warm_publisher` drops the old bindings.
        task_queues=[Queue(name, routing_key=name) for name in (*JOB_QUEUES, WEBHOOK_QUEUE)],
        task_default_queue="gmiq.normal",
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "global_keyprefix": broker_key_prefix(settings),
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": restore_sweep_s(settings.visibility_timeout_s),
            "unacked_restore_throttle": 1,
            # Check queues in the listed order: high, normal, low.
            "queue_order_strategy": "priority",
        },
    )
    return app
