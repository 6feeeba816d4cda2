"""Submit, read, wait for and cancel jobs: used by the HTTP API and by Python producers directly.

A submission is durable once its row is committed: if Redis cannot take the message right then,
the workers' dispatcher publishes it from Postgres, so an accepted job always runs.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api_contracts.jobs import (
    TERMINAL_STATUSES,
    InvalidFieldError,
    JobListView,
    JobSubmitRequest,
    JobView,
)
from api_contracts.messages import JobMessage
from worker import repository, webhook_store
from worker.callbacks import CallbackPolicy
from worker.db import unit_of_work
from worker.intake import Intake, NewRow, publish_or_defer
from worker.payloads import continue_request
from worker.views import Row, job_view

Publisher = Callable[[JobMessage], None]


class IdempotencyConflictError(Exception):
    """The idempotency key was first used with a different submission."""


class JobNotFoundError(Exception):
    """No job has that id."""


class InvalidCursorError(ValueError):
    """A list cursor we did not issue."""


class InvalidParentError(InvalidFieldError):
    """The `parent_job_id` of a submission names a job that cannot be continued."""

    def __init__(self, reason: str) -> None:
        super().__init__("parent_job_id", reason)


class JobNotCancellableError(Exception):
    """The job already ended."""

    def __init__(self, status: str) -> None:
        super().__init__(f"job already {status}")
        self.status = status


def message_for_submission(
    submission: JobSubmitRequest, job_id: uuid.UUID, default_model: str
) -> JobMessage:
    """The message for a new job; the model is fixed at submission so retries use the same one."""
    return JobMessage(
        job_id=job_id,
        kind=submission.kind,
        request=submission.request,
        model=submission.request.get("model") or default_model,
        metadata=submission.metadata,
        priority=submission.priority,
        idempotency_key=submission.idempotency_key,
        callback_url=submission.callback_url,
        submitted_at=datetime.now(UTC),
        timeouts=submission.timeouts,
        parent_job_id=submission.parent_job_id,
    )


def encode_cursor(job: Row) -> str:
    """An opaque cursor naming the last job of a page (a row by column name)."""
    created_at: Any = job["created_at"]
    if isinstance(created_at, datetime):
        created_at = created_at.isoformat()
    raw = f"{created_at}|{job['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor names."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursorError("cursor is not one this API issued") from exc


def _same_submission(job: Row, message: JobMessage) -> bool:
    return (
        job["kind"] == message.kind
        and job["request"] == message.request
        and job["model"] == message.model
        and (job["metadata"] or {}) == message.metadata
        and job["priority"] == message.priority
        and job["callback_url"] == message.callback_url
        and job["timeouts"] == repository.stored_timeouts(message.timeouts)
        # A stored row read as JSON holds the id as text.
        and _text(job["parent_job_id"]) == _text(message.parent_job_id)
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class JobProducer:
    """The producer API; `publish` puts a message on Redis (see `worker.queues.publish_job`)."""

    sessions: sessionmaker[Session]
    publish: Publisher
    default_model: str
    redispatch_after_s: float = 600.0
    # The operator's callback rules; None skips them (delivery checks addresses again anyway).
    callbacks: CallbackPolicy | None = None
    # Records and publishes jobs in batches; None: each job is its own INSERT and publish.
    intake: Intake | None = None

    def submit(self, submission: JobSubmitRequest) -> tuple[JobView, bool]:
        """Record and enqueue a job; returns its view and whether it is new (False when an
        idempotency key named an earlier job)."""
        sealed_secret = None
        if self.callbacks is not None:  # raises InvalidCallbackError before anything is written
            sealed_secret = self.callbacks.check(
                submission.callback_url, submission.callback_secret
            )
        submission = self._continue_parent(submission)
        message = message_for_submission(submission, uuid.uuid4(), self.default_model)
        if sealed_secret is None and self.intake is not None:
            return self._settled(message, self.intake.submit(message).result())
        # Autocommit unless a callback secret is stored with the job (a second statement).
        with unit_of_work(self.sessions, single_statement=sealed_secret is None) as session:
            inserted = repository.insert_job(
                session, repository.NewJob.from_message(message), self.redispatch_after_s
            )
            if inserted is None:
                return self._existing(session, message), False
            if sealed_secret is not None:
                webhook_store.save_callback_secret(session, message.job_id, sealed_secret)
        publish_or_defer(self.sessions, self._publish_each, [message])
        # The row as inserted is the view (a new job has no children): no read-back.
        return job_view(inserted), True

    async def submit_async(self, submission: JobSubmitRequest) -> tuple[JobView, bool]:
        """`submit` for an event loop. A plain job waits for its intake batch without holding a
        thread; one that needs a lookup first (a callback address to resolve, a parent to read)
        or an idempotent replay runs `submit`'s blocking parts in a worker thread."""
        plain = (
            submission.callback_url is None
            and submission.callback_secret is None
            and submission.parent_job_id is None
        )
        if self.intake is None or not plain:
            return await run_in_threadpool(self.submit, submission)
        message = message_for_submission(submission, uuid.uuid4(), self.default_model)
        row = await asyncio.wrap_future(self.intake.submit(message))
        if row is None:
            return await run_in_threadpool(self._settled, message, row)
        return job_view(row), True

    def _settled(self, message: JobMessage, row: NewRow | None) -> tuple[JobView, bool]:
        """The answer for a job the intake recorded: its row, or None when its idempotency
        key named an earlier job."""
        if row is not None:
            return job_view(row), True
        with unit_of_work(self.sessions, single_statement=True) as session:
            return self._existing(session, message), False

    def _existing(self, session: Session, message: JobMessage) -> JobView:
        assert message.idempotency_key is not None
        record = repository.find_job_by_idempotency_key(session, message.idempotency_key)
        if record is None:  # pragma: no cover - the insert conflicted on something that vanished
            raise IdempotencyConflictError("idempotency key raced with a deletion")
        if not _same_submission(record["job"], message):
            raise IdempotencyConflictError(
                "idempotency_key was already used with a different submission"
            )
        return _view(record)

    def _publish_each(self, messages: Sequence[JobMessage]) -> None:
        for message in messages:
            self.publish(message)

    def close(self) -> None:
        """Stop the intake's lanes, if it has one (after the batches being written)."""
        if self.intake is not None:
            self.intake.close()

    def enqueue_only(self, submission: JobSubmitRequest) -> uuid.UUID:
        """Publish without writing a row, as a producer that only has Redis does; the worker
        creates the row when it takes the message."""
        submission = self._continue_parent(submission)
        message = message_for_submission(submission, uuid.uuid4(), self.default_model)
        self.publish(message)
        return message.job_id

    def _continue_parent(self, submission: JobSubmitRequest) -> JobSubmitRequest:
        """Expand a follow-up into the request it sends (see `payloads.continue_request`).

        Done once, here, so the stored request is exactly what goes upstream on every attempt,
        and a chain of follow-ups just works: each parent already holds its whole history."""
        parent_id = submission.parent_job_id
        if parent_id is None:
            return submission
        with self.sessions() as session:
            parent = repository.get_job(session, parent_id)
        if parent is None:
            raise InvalidParentError("no job has this id")
        if parent.kind != submission.kind:
            raise InvalidParentError(f"is a {parent.kind} job, not a {submission.kind} job")
        if parent.status != "succeeded":
            raise InvalidParentError(f"must have succeeded; it is {parent.status}")
        try:
            request = continue_request(
                submission.kind, submission.request, parent.request, parent.result
            )
        except ValueError as exc:
            raise InvalidParentError(str(exc)) from exc
        return submission.model_copy(update={"request": request})

    def get(self, job_id: uuid.UUID) -> JobView:
        """The job's current view: one statement, in autocommit (a BEGIN and a ROLLBACK around a
        lone SELECT were two more round trips per poll, each a wait for the GIL on the way
        back, and most of the API's slowest polls)."""
        with unit_of_work(self.sessions, single_statement=True) as session:
            record = repository.get_job_record(session, job_id)
        if record is None:
            raise JobNotFoundError(str(job_id))
        return _view(record)

    def status(self, job_id: uuid.UUID) -> str:
        """Only the job's status: one indexed read, no children."""
        with unit_of_work(self.sessions, single_statement=True) as session:
            status = repository.get_job_status(session, job_id)
        if status is None:
            raise JobNotFoundError(str(job_id))
        return status

    def list(self, status: str | None, limit: int, cursor: str | None) -> JobListView:
        """A page of jobs, newest first."""
        before = decode_cursor(cursor) if cursor else None
        with unit_of_work(self.sessions, single_statement=True) as session:
            records = repository.list_jobs(session, status, limit + 1, before)
        page = records[:limit]
        next_cursor = encode_cursor(page[-1]["job"]) if len(records) > limit and page else None
        return JobListView(data=[_view(record) for record in page], next_cursor=next_cursor)

    def cancel(self, job_id: uuid.UUID) -> JobView:
        """Cancel a job that has not started (it never runs); a running one is flagged: it is
        not retried, and a streamed call stops at its next chunk once the worker's heartbeat
        has seen the flag."""
        with unit_of_work(self.sessions) as session:
            status = repository.get_job_status(session, job_id)
            if status is None:
                raise JobNotFoundError(str(job_id))
            if status in TERMINAL_STATUSES:
                raise JobNotCancellableError(status)
            repository.cancel_job(session, job_id)
        return self.get(job_id)

    def wait(self, job_id: uuid.UUID, timeout_s: float, poll_s: float = 0.2) -> JobView:
        """Poll until the job ends or the timeout passes; returns the last view either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.get(job_id)
            if view.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
                return view
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _view(record: repository.JobRecord) -> JobView:
    return job_view(
        record["job"],
        record["tool_calls"],
        record["usage"],
        record["attempts"],
        record["deliveries"],
    )
