"""The thin Celery task of webhook deliveries, on the `gmiq.webhooks` queue."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

from worker.celery_app import RETRY_WHILE_DATABASE_DOWN
from worker.runtime import current_runtime
from worker.webhooks import DELIVER_WEBHOOK_TASK

log = logging.getLogger(__name__)


# No Celery-level retries of the POST: the schedule lives in Postgres. A database outage only
# puts the message back, like job messages.
@shared_task(name=DELIVER_WEBHOOK_TASK, **RETRY_WHILE_DATABASE_DOWN)
def deliver_webhook(event_id: str, attempt: int) -> str:
    """Make one attempt of one event; duplicates and stale messages are no-ops."""
    outcome = current_runtime().webhooks.deliver(uuid.UUID(event_id), attempt)
    log.info("webhook %s attempt %s: %s", event_id, attempt, outcome)
    return outcome
