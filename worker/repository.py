"""Every SQL statement gmiq runs. Functions take a Session and never commit: callers own the
transaction. Timestamps come from Postgres' clock so workers on skewed hosts agree."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from api_contracts.messages import JobMessage
from worker import webhook_store
from worker.models import Attempt, Job, ToolCall, Usage
from worker.payloads import ParsedResult
from worker.webhook_models import WebhookEvent

_ACTIVE = ("queued", "retrying")


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


@dataclass(frozen=True)
class NewJob:
    """The columns a submission sets."""

    id: uuid.UUID
    kind: str
    model: str
    priority: str
    request: dict[str, Any]
    metadata: dict[str, Any]
    idempotency_key: str | None
    callback_url: str | None

    @classmethod
    def from_message(cls, message: JobMessage) -> NewJob:
        """The row a job message stands for."""
        return cls(
            id=message.job_id,
            kind=message.kind,
            model=message.model,
            priority=message.priority,
            request=message.request,
            metadata=message.metadata,
            idempotency_key=message.idempotency_key,
            callback_url=message.callback_url,
        )


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now runs, with the attempt number it holds."""

    id: uuid.UUID
    kind: str
    model: str
    request: dict[str, Any]
    attempt: int


def insert_job(session: Session, job: NewJob, publish_delay_s: float) -> bool:
    """Insert a queued job unless its id or idempotency key exists; True if inserted.

    `next_attempt_at` is when the dispatcher publishes it again if nobody has claimed it.
    """
    statement = (
        pg_insert(Job)
        .values(
            id=job.id,
            kind=job.kind,
            status="queued",
            model=job.model,
            priority=job.priority,
            request=job.request,
            meta=job.metadata,
            idempotency_key=job.idempotency_key,
            callback_url=job.callback_url,
            next_attempt_at=func.now() + _seconds(publish_delay_s),
        )
        .on_conflict_do_nothing()
        .returning(Job.id)
    )
    return session.execute(statement).first() is not None


def mark_due_now(session: Session, job_id: uuid.UUID) -> None:
    """Ask the dispatcher to publish a queued job at its next pass (its publish failed)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(next_attempt_at=func.now())
    )


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job row, or None."""
    return session.get(Job, job_id)


def find_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job first submitted with this key, or None."""
    return session.scalars(select(Job).where(Job.idempotency_key == key)).first()


def list_jobs(
    session: Session,
    status: str | None,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> Sequence[Job]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        created_at, job_id = before
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return session.scalars(query).all()


@dataclass
class JobChildren:
    """The rows hanging off a page of jobs, by job id."""

    tool_calls: dict[uuid.UUID, list[ToolCall]]
    usages: dict[uuid.UUID, Usage]
    attempts: dict[uuid.UUID, list[Attempt]]
    deliveries: dict[uuid.UUID, list[WebhookEvent]] = field(default_factory=dict)


def load_children(session: Session, job_ids: Sequence[uuid.UUID]) -> JobChildren:
    """Tool calls and attempts (in order) and usage for a page of jobs, in three queries."""
    calls: dict[uuid.UUID, list[ToolCall]] = {job_id: [] for job_id in job_ids}
    usages: dict[uuid.UUID, Usage] = {}
    attempts: dict[uuid.UUID, list[Attempt]] = {job_id: [] for job_id in job_ids}
    children = JobChildren(calls, usages, attempts)
    if not job_ids:
        return children
    for call in session.scalars(
        select(ToolCall).where(ToolCall.job_id.in_(job_ids)).order_by(ToolCall.position)
    ):
        calls[call.job_id].append(call)
    for usage in session.scalars(select(Usage).where(Usage.job_id.in_(job_ids))):
        usages[usage.job_id] = usage
    for attempt in session.scalars(
        select(Attempt).where(Attempt.job_id.in_(job_ids)).order_by(Attempt.number)
    ):
        attempts[attempt.job_id].append(attempt)
    children.deliveries = webhook_store.load_events(session, job_ids)
    return children


def claim_job(
    session: Session, job_id: uuid.UUID, worker_id: str, lease_s: float
) -> ClaimedJob | None:
    """Move a queued or retrying job to running and open its next attempt; None if not ours.

    The status guard makes a duplicated or redelivered message a no-op.
    """
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_ACTIVE), Job.cancel_requested.is_(False))
        .values(
            status="running",
            attempt_count=Job.attempt_count + 1,
            started_at=func.coalesce(Job.started_at, func.now()),
            updated_at=func.now(),
            next_attempt_at=None,
            lease_expires_at=func.now() + _seconds(lease_s),
            worker_id=worker_id,
        )
        .returning(Job.id, Job.kind, Job.model, Job.request, Job.attempt_count)
    ).first()
    if row is None:
        return None
    session.execute(
        insert(Attempt).values(
            job_id=job_id,
            number=row.attempt_count,
            worker_id=worker_id,
            started_at=func.now(),
            outcome="running",
        )
    )
    return ClaimedJob(row.id, row.kind, row.model, row.request, row.attempt_count)


def _finish_job(
    session: Session, claim: ClaimedJob, worker_id: str, values: dict[str, Any]
) -> bool:
    """Update the job only while this worker still holds this attempt."""
    row = session.execute(
        update(Job)
        .where(
            Job.id == claim.id,
            Job.status == "running",
            Job.worker_id == worker_id,
            Job.attempt_count == claim.attempt,
        )
        .values(updated_at=func.now(), lease_expires_at=None, **values)
        .returning(Job.id)
    ).first()
    return row is not None


def _close_attempt(
    session: Session, claim: ClaimedJob, outcome: str, values: dict[str, Any]
) -> None:
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == claim.id, Attempt.number == claim.attempt)
        .values(outcome=outcome, finished_at=func.now(), **values)
    )


def record_success(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    status_code: int,
    result: dict[str, Any],
    parsed: ParsedResult,
) -> bool:
    """Store the body, text, tool calls and usage, and mark the job succeeded; False if the
    attempt was no longer ours (it was reaped), in which case nothing is written."""
    if not _finish_job(
        session,
        claim,
        worker_id,
        {
            "status": "succeeded",
            "finished_at": func.now(),
            "result": result,
            "output_text": parsed.output_text,
            "error": None,
        },
    ):
        return False
    _close_attempt(session, claim, "succeeded", {"status_code": status_code})
    if parsed.tool_calls:
        session.execute(
            pg_insert(ToolCall)
            .values(
                [
                    {
                        "job_id": claim.id,
                        "position": position,
                        "call_id": call.call_id,
                        "type": call.type,
                        "name": call.name,
                        "arguments": call.arguments,
                        "arguments_raw": call.arguments_raw,
                    }
                    for position, call in enumerate(parsed.tool_calls)
                ]
            )
            .on_conflict_do_nothing()
        )
    if parsed.usage is not None:
        usage = parsed.usage
        session.execute(
            pg_insert(Usage)
            .values(
                job_id=claim.id,
                model=usage.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
                cached_tokens=usage.cached_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            )
            .on_conflict_do_nothing()
        )
    webhook_store.create_job_event(session, claim.id)
    return True


def record_failure(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    error: dict[str, Any],
) -> bool:
    """Mark the job failed with the error; the attempt keeps the same error."""
    if not _finish_job(
        session, claim, worker_id, {"status": "failed", "finished_at": func.now(), "error": error}
    ):
        return False
    _close_attempt(session, claim, "failed", _attempt_error(error))
    webhook_store.create_job_event(session, claim.id)
    return True


def record_retry(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    error: dict[str, Any],
    delay_s: float,
    reason: str,
) -> bool:
    """Park the job as retrying; the dispatcher publishes it when `next_attempt_at` comes.
    A job whose cancellation was asked for while it ran is cancelled here instead."""
    cancelled = Job.cancel_requested.is_(True)
    if not _finish_job(
        session,
        claim,
        worker_id,
        {
            "status": case((cancelled, "cancelled"), else_="retrying"),
            "finished_at": case((cancelled, func.now()), else_=None),
            "next_attempt_at": case((cancelled, None), else_=func.now() + _seconds(delay_s)),
            "error": error,
        },
    ):
        return False
    values = _attempt_error(error) | {"delay_s": delay_s, "delay_reason": reason}
    _close_attempt(session, claim, "retry", values)
    # Makes an event only if the CASE above cancelled the job.
    webhook_store.create_job_event(session, claim.id)
    return True


def _attempt_error(error: dict[str, Any]) -> dict[str, Any]:
    return {
        "status_code": error.get("status_code"),
        "error_type": error.get("type"),
        "error_message": error.get("message"),
    }


def record_attempt_timing(
    session: Session,
    claim: ClaimedJob,
    time_to_first_token_s: float | None,
    tokens_per_s: float | None,
) -> None:
    """Store how fast an attempt answered (call it with the attempt's outcome)."""
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == claim.id, Attempt.number == claim.attempt)
        .values(time_to_first_token_s=time_to_first_token_s, tokens_per_s=tokens_per_s)
    )


def cancel_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """Cancel a job that has not started; flag a running one so it is not retried."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_ACTIVE))
        .values(
            status="cancelled",
            cancel_requested=True,
            finished_at=func.now(),
            updated_at=func.now(),
            next_attempt_at=None,
        )
    )
    webhook_store.create_job_event(session, job_id)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested=True, updated_at=func.now())
    )
    return session.get(Job, job_id, populate_existing=True)


def is_cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    """Whether someone asked to cancel this job."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def renew_leases(
    session: Session, job_ids: Sequence[uuid.UUID], worker_id: str, lease_s: float
) -> int:
    """Extend the leases of the jobs this worker runs, in one statement."""
    if not job_ids:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.worker_id == worker_id, Job.status == "running")
        .values(lease_expires_at=func.now() + _seconds(lease_s))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def release_jobs(session: Session, job_ids: Sequence[uuid.UUID], worker_id: str) -> int:
    """Hand running jobs back to the queue (a worker shutting down past its grace): the
    attempt is recorded as lost to shutdown; it does not count against the job."""
    if not job_ids:
        return 0
    released = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.worker_id == worker_id, Job.status == "running")
        .values(
            status="queued",
            next_attempt_at=func.now(),
            lease_expires_at=None,
            worker_id=None,
            updated_at=func.now(),
        )
        .returning(Job.id, Job.attempt_count)
    ).all()
    for job_id, attempt in released:
        session.execute(
            update(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == attempt)
            .values(
                outcome="lost",
                finished_at=func.now(),
                error_type="worker_shutdown",
                error_message="the worker shut down before the call finished; handed back",
            )
        )
    return len(released)


def reap_expired_leases(session: Session, max_lost: int, limit: int) -> list[uuid.UUID]:
    """Take back running jobs whose worker vanished: record the attempt as lost, then requeue
    the job for publishing now, or fail it once it has lost too many workers."""
    expired = session.execute(
        select(Job.id, Job.attempt_count, Job.lost_count)
        .where(Job.status == "running", Job.lease_expires_at < func.now())
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    requeued: list[uuid.UUID] = []
    for job_id, attempt, lost in expired:
        session.execute(
            update(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == attempt)
            .values(
                outcome="lost",
                finished_at=func.now(),
                error_type="worker_lost",
                error_message="the worker running this attempt stopped renewing its lease",
            )
        )
        if lost + 1 >= max_lost:
            error = {
                "type": "worker_lost",
                "message": f"the job lost its worker {lost + 1} times; giving up",
                "status_code": None,
            }
            values: dict[str, Any] = {"status": "failed", "finished_at": func.now(), "error": error}
        else:
            values = {"status": "queued", "next_attempt_at": func.now()}
            requeued.append(job_id)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                lost_count=Job.lost_count + 1,
                lease_expires_at=None,
                worker_id=None,
                updated_at=func.now(),
                **values,
            )
        )
        if values["status"] == "failed":
            webhook_store.create_job_event(session, job_id)
    return requeued


def take_due_jobs(session: Session, redispatch_after_s: float, limit: int) -> Sequence[Job]:
    """Jobs due for publishing; pushes their `next_attempt_at` out so a publish that never
    arrives is tried again, and locks skip so two dispatchers never take the same job."""
    due = session.scalars(
        select(Job)
        .where(Job.status.in_(_ACTIVE), Job.next_attempt_at <= func.now())
        .order_by(Job.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if due:
        session.execute(
            update(Job)
            .where(Job.id.in_([job.id for job in due]))
            .values(next_attempt_at=func.now() + _seconds(redispatch_after_s))
        )
    return due


def ping(session: Session) -> None:
    """Round-trip to the database."""
    session.execute(text("SELECT 1"))
