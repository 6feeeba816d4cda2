"""Every SQL statement gmiq runs. Functions take a Session and never commit: callers own the
transaction. Timestamps come from Postgres' clock so workers on skewed hosts agree."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import orjson
from sqlalchemy import (
    ARRAY,
    Boolean,
    Double,
    Integer,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from api_contracts.jobs import JobTimeouts
from api_contracts.messages import JobMessage
from worker import webhook_store
from worker.models import Attempt, Job
from worker.payloads import ParsedResult, ParsedUsage
from worker.timeouts import deadline_error

_ACTIVE = ("queued", "retrying")


def _seconds(value: Any) -> Any:
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
    timeouts: dict[str, Any] | None = None
    deadline_at: datetime | None = None
    parent_job_id: uuid.UUID | None = None

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
            timeouts=stored_timeouts(message.timeouts),
            deadline_at=deadline_for(message.timeouts, message.submitted_at),
            parent_job_id=message.parent_job_id,
        )


def stored_timeouts(timeouts: JobTimeouts | None) -> dict[str, Any] | None:
    """The timeouts a caller set, as stored and compared (None when they set none)."""
    if timeouts is None:
        return None
    return timeouts.model_dump(exclude_none=True) or None


def deadline_for(timeouts: JobTimeouts | None, submitted_at: datetime | None) -> datetime | None:
    """When a job must be finished by; from now when the message does not say when it was sent."""
    if timeouts is None or timeouts.total_s is None:
        return None
    return (submitted_at or datetime.now(UTC)) + timedelta(seconds=timeouts.total_s)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now runs, with the attempt number it holds."""

    id: uuid.UUID
    kind: str
    model: str
    request: dict[str, Any]
    attempt: int
    timeouts: dict[str, Any] | None = None
    # Seconds left before the job's deadline, by Postgres' clock at the claim; None: no deadline.
    time_left_s: float | None = None


# Settable columns of a new job: the fields of each row `insert_jobs` sends.
_NEW_JOB_COLUMNS = (
    "id",
    "kind",
    "model",
    "priority",
    "request",
    "metadata",
    "idempotency_key",
    "callback_url",
    "timeouts",
    "deadline_at",
    "parent_job_id",
)


def _build_insert_jobs() -> Any:
    # Built once (see `_build_claim`): building this INSERT took more of a submission's CPU
    # than running it. The batch is one JSON parameter unpacked by Postgres (as in
    # `_build_record_successes`), so one job or two hundred is the same statement.
    job = Job.metadata.tables["job"]
    given = (
        func.jsonb_to_recordset(bindparam("b_batch", type_=JSONB))
        .table_valued(*(column(name, job.c[name].type) for name in _NEW_JOB_COLUMNS))
        .render_derived(name="given", with_types=True)
    )
    delay = _seconds(bindparam("b_publish_delay_s", type_=Double))
    return (
        pg_insert(job)
        .from_select(
            [*_NEW_JOB_COLUMNS, "status", "next_attempt_at"],
            select(
                *(given.c[name] for name in _NEW_JOB_COLUMNS),
                literal("queued", Text),
                func.now() + delay,
            ),
        )
        # Skips a row whose id or idempotency key exists, also one taken earlier in the batch.
        .on_conflict_do_nothing()
        .returning(*job.c)
    )


_INSERT_JOBS = _build_insert_jobs()


def insert_jobs(
    session: Session, jobs: Sequence[NewJob], publish_delay_s: float
) -> dict[uuid.UUID, dict[str, Any]]:
    """Insert queued jobs in one statement, each unless its id or idempotency key exists;
    returns the new rows by column name (as their views need them), by job id. A job left
    out was not inserted.

    `next_attempt_at` is when the dispatcher publishes a job again if nobody has claimed it.
    """
    if not jobs:
        return {}
    batch = [{name: getattr(job, name) for name in _NEW_JOB_COLUMNS} for job in jobs]
    rows = session.connection().execute(
        _INSERT_JOBS, {"b_batch": batch, "b_publish_delay_s": publish_delay_s}
    )
    return {row.id: dict(row._mapping) for row in rows}


def insert_job(session: Session, job: NewJob, publish_delay_s: float) -> dict[str, Any] | None:
    """Insert one queued job (see `insert_jobs`); its new row, or None if it existed."""
    return insert_jobs(session, [job], publish_delay_s).get(job.id)


def mark_due_now(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Ask the dispatcher to publish these queued jobs at its next pass (their publish failed)."""
    session.execute(
        update(Job)
        .where(Job.id == any_(bindparam("b_job_ids", type_=ARRAY(PG_UUID(as_uuid=True)))))
        .where(Job.status == "queued")
        .values(next_attempt_at=func.now()),
        {"b_job_ids": list(job_ids)},
    )


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job row, or None."""
    return session.get(Job, job_id)


def get_job_status(session: Session, job_id: uuid.UUID) -> str | None:
    """Only the job's status (what a follower checks while it waits), or None."""
    return session.scalar(select(Job.status).where(Job.id == job_id))


def find_job_by_idempotency_key(session: Session, key: str) -> JobRecord | None:
    """The job first submitted with this key, with its children, or None."""
    found = _job_records(session, _JOB.c.idempotency_key == key)
    return found[0] if found else None


def list_jobs(
    session: Session,
    status: str | None,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[JobRecord]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat; each
    job comes with its children, all in one statement."""
    job = _JOB.c
    conditions: list[Any] = []
    if status is not None:
        conditions.append(job.status == status)
    if before is not None:
        created_at, job_id = before
        conditions.append(
            or_(job.created_at < created_at, and_(job.created_at == created_at, job.id < job_id))
        )
    return _job_records(
        session, *conditions, order_by=(job.created_at.desc(), job.id.desc()), limit=limit
    )


# The hot statements below are Core, on tables: no ORM bookkeeping per execution.
_tables = Job.metadata.tables


def _build_claim() -> Any:
    # Built once: constructing a CTE statement costs more CPU than running it. Parameters are
    # named `b_*` because Core DML takes a parameter named like a column as a value to SET.
    job = _tables["job"]
    claimed = (
        update(job)
        .where(
            job.c.id == any_(bindparam("b_job_ids", type_=ARRAY(PG_UUID(as_uuid=True)))),
            # Not `in_`: SQLAlchemy renders an IN list afresh on every execution.
            or_(*(job.c.status == status for status in _ACTIVE)),
            job.c.cancel_requested.is_(False),
            # An overdue job is failed by `expire_overdue_jobs`, not called.
            or_(job.c.deadline_at.is_(None), job.c.deadline_at > func.now()),
        )
        .values(
            status="running",
            attempt_count=job.c.attempt_count + 1,
            started_at=func.coalesce(job.c.started_at, func.now()),
            updated_at=func.now(),
            next_attempt_at=None,
            lease_expires_at=func.now() + _seconds(bindparam("b_lease_s", type_=Double)),
            worker_id=bindparam("b_worker_id", type_=Text),
        )
        .returning(
            job.c.id,
            job.c.kind,
            job.c.model,
            job.c.request,
            job.c.attempt_count,
            job.c.timeouts,
            func.extract("epoch", job.c.deadline_at - func.now()).label("time_left_s"),
        )
        .cte("claimed")
    )
    opened = (
        insert(_tables["attempt"])
        .from_select(
            ["job_id", "number", "worker_id", "started_at", "outcome"],
            select(
                claimed.c.id,
                claimed.c.attempt_count,
                bindparam("b_worker_id", type_=Text),
                func.now(),
                literal("running", Text),
            ),
        )
        .cte("opened")
    )
    return select(claimed).add_cte(opened)


_CLAIM = _build_claim()


def claim_job(
    session: Session, job_id: uuid.UUID, worker_id: str, lease_s: float
) -> ClaimedJob | None:
    """Move a queued or retrying job to running and open its next attempt, in one statement;
    None if not ours.

    The status guard makes a duplicated or redelivered message a no-op.
    """
    claims = claim_jobs(session, [job_id], worker_id, lease_s)
    return claims[0] if claims else None


def claim_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], worker_id: str, lease_s: float
) -> list[ClaimedJob]:
    """`claim_job` for many jobs in one statement: the ones claimed, in no particular order
    (a job not among them was not ours to claim, or does not exist)."""
    rows = session.connection().execute(
        _CLAIM, {"b_job_ids": list(job_ids), "b_worker_id": worker_id, "b_lease_s": lease_s}
    )
    return [
        ClaimedJob(
            row.id,
            row.kind,
            row.model,
            row.request,
            row.attempt_count,
            row.timeouts,
            None if row.time_left_s is None else float(row.time_left_s),
        )
        for row in rows
    ]


def _held(claim: ClaimedJob, worker_id: str) -> tuple[Any, ...]:
    """The job is still running this worker's attempt (not reaped, not superseded)."""
    return (
        Job.id == claim.id,
        Job.status == "running",
        Job.worker_id == worker_id,
        Job.attempt_count == claim.attempt,
    )


def _finish_job(
    session: Session, claim: ClaimedJob, worker_id: str, values: dict[str, Any]
) -> bool:
    """Update the job only while this worker still holds this attempt."""
    row = session.execute(
        update(Job)
        .where(*_held(claim, worker_id))
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


_USAGE_COLUMNS = (
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


# One row per success, as `record_successes` sends them (`jsonb_to_recordset` column types).
_SUCCESS_FIELDS: tuple[tuple[str, Any], ...] = (
    ("job_id", PG_UUID(as_uuid=True)),
    ("attempt", Integer),
    ("result", JSONB),
    ("output_text", Text),
    ("status_code", Integer),
    ("first_token_s", Double),
    ("tokens_per_s", Double),
    ("event_id", PG_UUID(as_uuid=True)),
    ("has_usage", Boolean),
    ("usage_model", Text),
    ("input_tokens", Integer),
    ("output_tokens", Integer),
    ("total_tokens", Integer),
    ("cached_tokens", Integer),
    ("reasoning_tokens", Integer),
)


_ON_THE_JOB = ("job_id", "result", "output_text")


def _build_record_successes() -> Any:
    # Built once; see `_build_claim`. The whole batch is one JSON parameter, unpacked by
    # Postgres into rows, so a batch of any size is the same statement (compiled once).
    job, attempt = _tables["job"], _tables["attempt"]
    given = (
        func.jsonb_to_recordset(bindparam("b_batch", type_=JSONB))
        .table_valued(*(column(name, type_) for name, type_ in _SUCCESS_FIELDS))
        .render_derived(name="given", with_types=True)
    )
    done = (
        update(job)
        .where(
            job.c.id == given.c.job_id,
            job.c.status == "running",
            job.c.worker_id == bindparam("b_worker_id", type_=Text),
            job.c.attempt_count == given.c.attempt,
        )
        .values(
            status="succeeded",
            finished_at=func.now(),
            updated_at=func.now(),
            lease_expires_at=None,
            result=given.c.result,
            output_text=given.c.output_text,
            error=None,
        )
        .returning(
            job.c.id,
            job.c.callback_url,
            # What the other parts need; not the body, which is stored once, on the job.
            *(given.c[name] for name, _ in _SUCCESS_FIELDS if name not in _ON_THE_JOB),
        )
        .cte("done")
    )
    closed = (
        update(attempt)
        .where(attempt.c.job_id == done.c.id, attempt.c.number == done.c.attempt)
        .values(
            outcome="succeeded",
            finished_at=func.now(),
            status_code=done.c.status_code,
            time_to_first_token_s=done.c.first_token_s,
            tokens_per_s=done.c.tokens_per_s,
        )
        .cte("closed")
    )
    announced = (
        pg_insert(_tables["webhook_event"])
        .from_select(
            ["id", "job_id", "type", "url", "next_attempt_at"],
            select(
                done.c.event_id,
                done.c.id,
                literal("job.succeeded", Text),
                done.c.callback_url,
                func.now(),
            ).where(done.c.callback_url.is_not(None)),
        )
        .on_conflict_do_nothing()
        .cte("announced")
    )
    counted = (
        pg_insert(_tables["usage"])
        .from_select(
            ["job_id", *_USAGE_COLUMNS],
            select(
                done.c.id,
                done.c.usage_model,
                *(done.c[name] for name in _USAGE_COLUMNS[1:]),
            ).where(done.c.has_usage),
        )
        .on_conflict_do_nothing()
        .cte("counted")
    )
    return select(done.c.id, done.c.attempt).add_cte(closed, announced, counted)


_RECORD_SUCCESSES = _build_record_successes()


@dataclass(frozen=True)
class Success:
    """A call that answered 2xx with a body we could read, ready to store."""

    claim: ClaimedJob
    status_code: int
    result: dict[str, Any]
    parsed: ParsedResult
    first_token_s: float | None = None
    tokens_per_s: float | None = None


def _success_row(success: Success) -> dict[str, Any]:
    claim, parsed, usage = success.claim, success.parsed, success.parsed.usage
    row: dict[str, Any] = {
        "job_id": claim.id,
        "attempt": claim.attempt,
        "result": success.result,
        "output_text": parsed.output_text,
        "status_code": success.status_code,
        "first_token_s": success.first_token_s,
        "tokens_per_s": success.tokens_per_s,
        "event_id": uuid.uuid4(),
        "has_usage": usage is not None,
    }
    if usage is not None:
        row["usage_model"] = usage.model
        row |= {name: getattr(usage, name) for name in _USAGE_COLUMNS[1:]}
    return row


def record_success(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    status_code: int,
    result: dict[str, Any],
    parsed: ParsedResult,
    first_token_s: float | None = None,
    tokens_per_s: float | None = None,
) -> bool:
    """Store one success (see `record_successes`); False if the attempt was no longer ours."""
    success = Success(claim, status_code, result, parsed, first_token_s, tokens_per_s)
    return bool(record_successes(session, worker_id, [success]))


def record_successes(
    session: Session, worker_id: str, successes: Sequence[Success]
) -> set[tuple[uuid.UUID, int]]:
    """Store each body, text, tool calls and usage, close each attempt with its timing, make
    the webhook events, and mark the jobs succeeded; returns the (job id, attempt) of those
    stored. An attempt no longer ours (reaped, or superseded by a later attempt of the same
    job in the same batch) is left out, and nothing of it is written.

    One statement for the whole batch (tool calls aside): every part hangs off the guarded
    job update, so for each job either all of it is written or none, in one round trip.
    A batch locks several job rows, in the order its plan visits them; the other statements
    that lock several running jobs (lease renewal, the reaper) skip locked rows rather than
    wait, so they cannot deadlock with it."""
    if not successes:
        return set()
    connection = session.connection()
    batch = [_success_row(success) for success in successes]
    rows = connection.execute(_RECORD_SUCCESSES, {"b_batch": batch, "b_worker_id": worker_id})
    stored = {(row.id, row.attempt) for row in rows}
    tool_calls = [
        {
            "job_id": success.claim.id,
            "position": position,
            "call_id": call.call_id,
            "type": call.type,
            "name": call.name,
            "arguments": call.arguments,
            "arguments_raw": call.arguments_raw,
        }
        for success in successes
        if (success.claim.id, success.claim.attempt) in stored
        for position, call in enumerate(success.parsed.tool_calls)
    ]
    if tool_calls:
        connection.execute(pg_insert(_tables["tool_call"]).on_conflict_do_nothing(), tool_calls)
    return stored


def warm_statements(session: Session, worker_id: str) -> None:
    """Run the worker's hot statements once for a job id that does not exist (so they change
    nothing): SQLAlchemy compiles each on its first use, which cost the first jobs after a
    start about 10 ms each, all at once."""
    nobody = ClaimedJob(uuid.uuid4(), "chat", "", {}, 0)
    claim_job(session, nobody.id, worker_id, 1.0)
    usage = ParsedUsage(0, 0, 0, 0, 0, None)
    record_successes(
        session,
        worker_id,
        [
            Success(nobody, 200, {}, ParsedResult(None)),
            Success(nobody, 200, {}, ParsedResult(None, usage=usage)),
        ],
    )
    get_job_record(session, nobody.id)


def record_failure(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    error: dict[str, Any],
    first_token_s: float | None = None,
    tokens_per_s: float | None = None,
) -> bool:
    """Mark the job failed with the error; the attempt keeps the same error (and how fast the
    call answered, for a stream that broke)."""
    if not _finish_job(
        session, claim, worker_id, {"status": "failed", "finished_at": func.now(), "error": error}
    ):
        return False
    values = _attempt_error(error) | _timing(first_token_s, tokens_per_s)
    _close_attempt(session, claim, "failed", values)
    webhook_store.create_job_event(session, claim.id)
    return True


def record_cancelled(session: Session, claim: ClaimedJob, worker_id: str) -> bool:
    """End a running job its caller cancelled, mid-call: nothing of the call is kept."""
    if not _finish_job(
        session, claim, worker_id, {"status": "cancelled", "finished_at": func.now()}
    ):
        return False
    _close_attempt(
        session,
        claim,
        "cancelled",
        {"error_type": "cancelled", "error_message": "cancelled by the caller mid-call"},
    )
    webhook_store.create_job_event(session, claim.id)
    return True


def record_retry(
    session: Session,
    claim: ClaimedJob,
    worker_id: str,
    error: dict[str, Any],
    delay_s: float,
    reason: str,
    first_token_s: float | None = None,
    tokens_per_s: float | None = None,
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
    _close_attempt(session, claim, "retry", values | _timing(first_token_s, tokens_per_s))
    # Makes an event only if the CASE above cancelled the job.
    webhook_store.create_job_event(session, claim.id)
    return True


def _attempt_error(error: dict[str, Any]) -> dict[str, Any]:
    return {
        "status_code": error.get("status_code"),
        "error_type": error.get("type"),
        "error_message": error.get("message"),
    }


def _timing(first_token_s: float | None, tokens_per_s: float | None) -> dict[str, Any]:
    return {"time_to_first_token_s": first_token_s, "tokens_per_s": tokens_per_s}


def cancel_job(session: Session, job_id: uuid.UUID) -> None:
    """Cancel a job that has not started; flag a running one so it is not retried. Both
    updates are guarded by status, so a worker finishing the job meanwhile wins."""
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


def is_cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    """Whether someone asked to cancel this job."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def renew_leases(
    session: Session, job_ids: Sequence[uuid.UUID], worker_id: str, lease_s: float
) -> list[uuid.UUID]:
    """Extend the leases of the jobs this worker runs, in one statement; returns those of them
    whose cancellation was asked for, so their calls can stop at the next safe point.

    A job whose row another transaction holds is skipped this time, never waited for: it is
    being recorded (or reaped) right now, and its lease has several heartbeats to run yet.
    Waiting would let a batched record, which locks its rows in whatever order its plan takes,
    and this renewal each hold a row the other wants, a deadlock."""
    if not job_ids:
        return []
    free = (
        select(Job.id)
        .where(Job.id.in_(job_ids), Job.worker_id == worker_id, Job.status == "running")
        .with_for_update(skip_locked=True)
        .cte("free")
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(select(free.c.id)))
        .values(lease_expires_at=func.now() + _seconds(lease_s))
        .returning(Job.id, Job.cancel_requested)
    ).all()
    return [job_id for job_id, cancel_requested in rows if cancel_requested]


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
    _lose_attempts(
        session,
        [(job_id, attempt) for job_id, attempt in released],
        "worker_shutdown",
        "the worker shut down before the call finished; handed back",
    )
    return len(released)


def _lose_attempts(
    session: Session, attempts: Sequence[tuple[uuid.UUID, int]], error_type: str, message: str
) -> None:
    """Close the given (job, attempt number) attempts as lost, in one statement."""
    if not attempts:
        return
    attempt = _tables["attempt"]
    session.connection().execute(
        update(attempt)
        .where(tuple_(attempt.c.job_id, attempt.c.number).in_(attempts))
        .values(
            outcome="lost", finished_at=func.now(), error_type=error_type, error_message=message
        )
    )


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
    _lose_attempts(
        session,
        [(job_id, attempt) for job_id, attempt, _ in expired],
        "worker_lost",
        "the worker running this attempt stopped renewing its lease",
    )
    requeued: list[uuid.UUID] = []
    for job_id, _, lost in expired:
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


def expire_overdue_jobs(session: Session, limit: int) -> list[uuid.UUID]:
    """Fail queued and retrying jobs whose deadline has passed, keeping their last error in the
    message; running ones end at their call's deadline, bounded by the job's."""
    overdue = session.execute(
        select(Job.id, Job.timeouts, Job.error)
        .where(Job.status.in_(_ACTIVE), Job.deadline_at <= func.now())
        .order_by(Job.deadline_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for job_id, timeouts, last_error in overdue:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="failed",
                error=deadline_error((timeouts or {}).get("total_s"), last_error),
                finished_at=func.now(),
                updated_at=func.now(),
                next_attempt_at=None,
            )
        )
        webhook_store.create_job_event(session, job_id)
    return [job_id for job_id, _, _ in overdue]


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


class JobRecord(TypedDict):
    """One job and the rows hanging off it, by column name, as `json_build_object` gave them."""

    job: dict[str, Any]
    tool_calls: list[dict[str, Any]]
    usage: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]


_JOB: Table = Job.metadata.tables["job"]
# A job and its children as one JSON document: one statement, and one parse, per job. Webhook
# events leave out their body (the job view they carry).
_JOB_RECORD = literal_column(
    """json_build_object(
    'job', row_to_json(job),
    'tool_calls', coalesce((SELECT json_agg(t ORDER BY t.position) FROM tool_call t
        WHERE t.job_id = job.id), '[]'),
    'usage', (SELECT row_to_json(u) FROM usage u WHERE u.job_id = job.id),
    'attempts', coalesce((SELECT json_agg(a ORDER BY a.number) FROM attempt a
        WHERE a.job_id = job.id), '[]'),
    'deliveries', coalesce((SELECT json_agg(json_build_object(
        'id', w.id, 'job_id', w.job_id, 'type', w.type, 'url', w.url, 'status', w.status,
        'attempt_count', w.attempt_count, 'last_status_code', w.last_status_code,
        'next_attempt_at', w.next_attempt_at, 'created_at', w.created_at,
        'delivered_at', w.delivered_at, 'failure_reason', w.failure_reason)
        ORDER BY w.created_at) FROM webhook_event w WHERE w.job_id = job.id), '[]')
)::text""",
    Text,
)


def _job_records(
    session: Session, *where: Any, order_by: Sequence[Any] = (), limit: int | None = None
) -> list[JobRecord]:
    query = select(_JOB_RECORD).select_from(_JOB).where(*where).order_by(*order_by).limit(limit)
    return [orjson.loads(document) for document in session.scalars(query)]


# Polling's statement, built once (see `_build_claim`).
_GET_JOB_RECORD = select(_JOB_RECORD).select_from(_JOB).where(_JOB.c.id == bindparam("b_id"))


def get_job_record(session: Session, job_id: uuid.UUID) -> JobRecord | None:
    """The job with its tool calls, usage, attempts and webhook events, or None."""
    document = session.connection().execute(_GET_JOB_RECORD, {"b_id": job_id}).scalar()
    return None if document is None else orjson.loads(document)
