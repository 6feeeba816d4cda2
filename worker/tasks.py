"""Thin Celery task shells: take the message, hand it to the use case."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from sqlalchemy.exc import OperationalError

from api_contracts.messages import RUN_JOB_TASK, JobMessage
from worker.runtime import current_runtime

log = logging.getLogger(__name__)


# A database outage must not eat the message (a Redis-only producer's message is the only copy
# of its job): Celery republishes it with backoff until Postgres answers again.
@shared_task(
    name=RUN_JOB_TASK,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def run_job(message: dict[str, Any]) -> str:
    """Run one job message; duplicates and redeliveries are no-ops decided in Postgres."""
    outcome = current_runtime().runner.run(JobMessage.model_validate(message))
    log.info("job %s: %s", message.get("job_id"), outcome)
    return outcome
