"""The Celery app: Redis broker, late acks, no result backend (Postgres is the record)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from worker.queues import JOB_QUEUES
from worker.settings import Settings


def broker_key_prefix(settings: Settings) -> str:
    """Every broker key gets this prefix, so deployments and test runs sharing a Redis never mix."""
    return f"{settings.redis_prefix}:"


def create_celery_app(settings: Settings) -> Celery:
    """A configured app; the task module registers itself on import."""
    app = Celery("gmiq", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name) for name in JOB_QUEUES],
        task_default_queue="gmiq.normal",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "global_keyprefix": broker_key_prefix(settings),
            "visibility_timeout": settings.visibility_timeout_s,
            # Check queues in the listed order: high, normal, low.
            "queue_order_strategy": "priority",
        },
    )
    return app
