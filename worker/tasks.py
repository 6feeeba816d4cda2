"""Thin Celery task shells: take the message, hand it to the use case."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from api_contracts.messages import RUN_JOB_TASK, JobMessage
from worker.celery_app import RETRY_WHILE_DATABASE_DOWN
from worker.runtime import current_runtime


@shared_task(name=RUN_JOB_TASK, **RETRY_WHILE_DATABASE_DOWN)
def run_job(message: dict[str, Any]) -> str:
    """Hand the message's job to the process' call loop, which claims it (duplicates and
    redeliveries are no-ops decided in Postgres there), calls and records it."""
    outcome = current_runtime().calls.take(JobMessage.model_validate(message))
    if outcome == "refused":
        # Stopping: the message goes back to its queue (it may be the job's only copy).
        raise Reject("worker stopping", requeue=True)
    return outcome
