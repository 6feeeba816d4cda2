"""Thin Celery task shells: take the message, hand it to the use case."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from api_contracts.messages import RUN_JOB_TASK, JobMessage
from worker.celery_app import RETRY_WHILE_DATABASE_DOWN
from worker.runtime import current_runtime

log = logging.getLogger(__name__)


@shared_task(name=RUN_JOB_TASK, **RETRY_WHILE_DATABASE_DOWN)
def run_job(message: dict[str, Any]) -> str:
    """Claim the message's job and hand its call to the process' call loop; duplicates and
    redeliveries are no-ops decided in Postgres."""
    outcome = current_runtime().calls.take(JobMessage.model_validate(message))
    if outcome == "refused":
        # Stopping: the message goes back to its queue (it may be the job's only copy).
        raise Reject("worker stopping", requeue=True)
    if outcome == "skipped":
        log.info("job %s: %s", message.get("job_id"), outcome)
    return outcome
