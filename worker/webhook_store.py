"""Every webhook SQL statement. Like `worker.repository`: functions take a Session and never
commit, and timestamps come from Postgres' clock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from api_contracts.jobs import TERMINAL_STATUSES
from worker.models import Job
from worker.webhook_models import CallbackSecret, WebhookAttempt, WebhookEvent
from worker.webhooks import DeliveryDecision


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


@dataclass(frozen=True)
class ClaimedEvent:
    """An event this worker now attempts, with the attempt number it holds."""

    id: uuid.UUID
    job_id: uuid.UUID
    type: str
    url: str
    body: str | None
    created_at: datetime
    number: int
    round_start: int


@dataclass(frozen=True)
class AttemptResult:
    """What one POST produced."""

    status_code: int | None
    latency_ms: float | None
    response_excerpt: str | None
    error: str | None
    # How long the receiver asked us to wait (Retry-After), if it did.
    retry_after_s: float | None = None


def create_job_event(session: Session, job_id: uuid.UUID) -> None:
    """Make the job's end event, due now, if the job has ended and has a callback URL.

    Call it in the transaction that ends the job: it reads the status that transaction wrote,
    so the event exists exactly when the terminal state does.
    """
    source = select(
        literal(uuid.uuid4(), UUID(as_uuid=True)),
        Job.id,
        func.concat("job.", Job.status),
        Job.callback_url,
        func.now(),
    ).where(
        Job.id == job_id,
        Job.callback_url.is_not(None),
        Job.status.in_(TERMINAL_STATUSES),
    )
    session.execute(
        pg_insert(WebhookEvent)
        .from_select(["id", "job_id", "type", "url", "next_attempt_at"], source)
        .on_conflict_do_nothing()
    )


def save_callback_secret(session: Session, job_id: uuid.UUID, sealed: str) -> None:
    """Keep a job's encrypted signing secret."""
    session.execute(
        pg_insert(CallbackSecret).values(job_id=job_id, sealed=sealed).on_conflict_do_nothing()
    )


def get_callback_secret(session: Session, job_id: uuid.UUID) -> str | None:
    """The job's encrypted signing secret, or None."""
    return session.scalar(select(CallbackSecret.sealed).where(CallbackSecret.job_id == job_id))


def take_due_events(
    session: Session, redispatch_after_s: float, limit: int
) -> list[tuple[uuid.UUID, int]]:
    """Due events and the attempt number each is due for; pushes `next_attempt_at` out so a
    publish that never arrives is tried again, and skips rows another dispatcher holds."""
    due = session.execute(
        select(WebhookEvent.id, WebhookEvent.attempt_count)
        .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= func.now())
        .order_by(WebhookEvent.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if due:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_([row.id for row in due]))
            .values(next_attempt_at=func.now() + _seconds(redispatch_after_s))
        )
    return [(row.id, row.attempt_count + 1) for row in due]


def claim_attempt(
    session: Session, event_id: uuid.UUID, number: int, worker_id: str, redispatch_after_s: float
) -> ClaimedEvent | None:
    """Take attempt `number` of a pending event; None if it is not due for that number (a
    duplicate or stale message). An attempt left running by a dead worker is marked lost, and
    the dispatcher republishes this one if its worker dies too."""
    row = session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_id,
            WebhookEvent.status == "pending",
            WebhookEvent.attempt_count == number - 1,
        )
        .values(
            attempt_count=number,
            next_attempt_at=func.now() + _seconds(redispatch_after_s),
            updated_at=func.now(),
        )
        .returning(
            WebhookEvent.job_id,
            WebhookEvent.type,
            WebhookEvent.url,
            WebhookEvent.body,
            WebhookEvent.created_at,
            WebhookEvent.round_start,
        )
    ).first()
    if row is None:
        return None
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.event_id == event_id, WebhookAttempt.outcome == "running")
        .values(
            outcome="lost",
            finished_at=func.now(),
            error="the worker making this attempt stopped before recording it",
        )
    )
    session.execute(
        insert(WebhookAttempt).values(
            event_id=event_id,
            number=number,
            worker_id=worker_id,
            started_at=func.now(),
            outcome="running",
        )
    )
    return ClaimedEvent(
        event_id, row.job_id, row.type, row.url, row.body, row.created_at, number, row.round_start
    )


def set_event_body(session: Session, event_id: uuid.UUID, body: str) -> None:
    """Fix the body every attempt of the event sends."""
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.body.is_(None))
        .values(body=body)
    )


def defer_event(session: Session, event_id: uuid.UUID, number: int, delay_s: float) -> None:
    """Put attempt `number` back to be published after a short wait, unattempted."""
    session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_id,
            WebhookEvent.status == "pending",
            WebhookEvent.attempt_count == number - 1,
        )
        .values(next_attempt_at=func.now() + _seconds(delay_s))
    )


def record_attempt(
    session: Session,
    claim: ClaimedEvent,
    result: AttemptResult,
    decision: DeliveryDecision,
) -> bool:
    """Close the attempt and move the event on (delivered, due again later, or failed); False
    if the attempt was no longer the event's current one, in which case nothing is written."""
    values: dict[str, Any] = {"last_status_code": result.status_code, "updated_at": func.now()}
    if decision.verdict == "delivered":
        values |= {"status": "delivered", "delivered_at": func.now(), "next_attempt_at": None}
    elif decision.verdict == "retry":
        values |= {"next_attempt_at": func.now() + _seconds(decision.delay_s)}
    else:
        values |= {"status": "failed", "next_attempt_at": None, "failure_reason": decision.reason}
    moved = session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == claim.id,
            WebhookEvent.status == "pending",
            WebhookEvent.attempt_count == claim.number,
        )
        .values(**values)
        .returning(WebhookEvent.id)
    ).first()
    if moved is None:
        return False
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.event_id == claim.id, WebhookAttempt.number == claim.number)
        .values(
            outcome=decision.verdict,
            finished_at=func.now(),
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            response_excerpt=result.response_excerpt,
            error=result.error,
        )
    )
    return True


def get_event(session: Session, event_id: uuid.UUID) -> WebhookEvent | None:
    """The event row, or None."""
    return session.get(WebhookEvent, event_id)


def list_attempts(session: Session, event_id: uuid.UUID) -> Sequence[WebhookAttempt]:
    """An event's attempts, oldest first."""
    return session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.event_id == event_id)
        .order_by(WebhookAttempt.number)
    ).all()


def list_events(
    session: Session, status: str | None, since: datetime | None, limit: int
) -> Sequence[WebhookEvent]:
    """Events, newest first, optionally in one state and created since a time."""
    query = select(WebhookEvent)
    if status is not None:
        query = query.where(WebhookEvent.status == status)
    if since is not None:
        query = query.where(WebhookEvent.created_at >= since)
    query = query.order_by(WebhookEvent.created_at.desc(), WebhookEvent.id.desc()).limit(limit)
    return session.scalars(query).all()


def _redeliver(*where: Any) -> Any:
    return (
        update(WebhookEvent)
        .where(WebhookEvent.status != "pending", *where)
        .values(
            status="pending",
            round_start=WebhookEvent.attempt_count,
            next_attempt_at=func.now(),
            failure_reason=None,
            updated_at=func.now(),
        )
    )


def redeliver_event(session: Session, event_id: uuid.UUID) -> WebhookEvent | None:
    """Make a delivered or failed event due now, with a fresh retry schedule, and return it as
    updated; None if it does not exist or is still pending."""
    statement = _redeliver(WebhookEvent.id == event_id).returning(WebhookEvent)
    return session.scalars(statement, execution_options={"populate_existing": True}).first()


def redeliver_failed_since(session: Session, since: datetime) -> list[uuid.UUID]:
    """Make every failed event created since `since` due now, each with a fresh schedule."""
    statement = _redeliver(WebhookEvent.status == "failed", WebhookEvent.created_at >= since)
    return list(session.scalars(statement.returning(WebhookEvent.id)))
