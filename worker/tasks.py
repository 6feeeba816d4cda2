"""Thin Celery task shells: take the message, hand it to the use case."""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject

from api_contracts.messages import RUN_JOB_TASK, JobMessage
from worker.broker_batches import hold_ack, release_ack
from worker.celery_app import RETRY_WHILE_DATABASE_DOWN
from worker.runtime import current_runtime


@shared_task(
    bind=True,
    name=RUN_JOB_TASK,
    # While the call loop has room, the consumer hands the job over itself, without a pool
    # thread; this task runs for the rest (a full loop, and messages that path leaves alone).
    Strategy="worker.job_strategy:job_strategy",
    **RETRY_WHILE_DATABASE_DOWN,
)
def run_job(self: Task[..., str], message: dict[str, Any]) -> str:
    """Hand the message's job to the process' call loop, which claims it (duplicates and
    redeliveries are no-ops decided in Postgres there), calls and records it, waiting while
    the loop is full. The message is acknowledged on return, but stays restorable in Redis
    until the claim has run: it may be the job's only copy."""
    job = JobMessage.model_validate(message)
    task_id = self.request.id
    if not isinstance(task_id, str):  # not from a broker (called directly): nothing to hold
        return current_runtime().calls.take(job)
    hold_ack(task_id)
    outcome = current_runtime().calls.take(job, settled=partial(release_ack, task_id))
    if outcome == "refused":
        release_ack(task_id)
        # Stopping: the message goes back to its queue (it may be the job's only copy).
        raise Reject("worker stopping", requeue=True)
    return outcome
