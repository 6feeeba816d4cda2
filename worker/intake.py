"""Submissions recorded and published in batches.

Alone, a submission is an INSERT and an LPUSH, each a round trip made from its own thread. Under
load, one API process spent most of its CPU on those round trips and on handing the GIL back
and forth around them (docs/performance.md). Here the submissions that arrive together share
one INSERT and one pipelined publish, done on a lane thread (`worker.batcher`): at low load a
batch is one job and waits for nothing. The caller waits on a future, which an async handler
awaits without holding a thread.

A job is durable once its batch's INSERT commits: if Redis then cannot take the messages, the
dispatcher publishes them from Postgres (`repository.mark_due_now`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from psycopg.errors import TransactionRollback
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api_contracts.messages import JobMessage
from worker import repository
from worker.batcher import Batcher
from worker.db import DATABASE_UNREACHABLE, unit_of_work

log = logging.getLogger(__name__)

# A new job's row by column name, as `repository.insert_jobs` returns it.
NewRow = dict[str, Any]
BatchPublisher = Callable[[Sequence[JobMessage]], None]


def publish_or_defer(
    sessions: sessionmaker[Session], publish: BatchPublisher, messages: Sequence[JobMessage]
) -> None:
    """Publish the messages of jobs just committed; if Redis cannot take them, ask the
    dispatcher to publish them at its next pass instead, so an accepted job always runs."""
    if not messages:
        return
    try:
        publish(messages)
    except Exception as exc:  # kombu and redis-py raise many kinds; all mean "not on Redis"
        log.warning("publish of %d job(s) deferred: %s", len(messages), type(exc).__name__)
        try:
            with unit_of_work(sessions, single_statement=True) as session:
                repository.mark_due_now(session, [message.job_id for message in messages])
        except SQLAlchemyError as lost:
            # The jobs are committed, so they are accepted: the dispatcher publishes them when
            # their first redispatch comes due (`GMIQ_REDISPATCH_AFTER_S`), only later.
            log.error(
                "%d job(s) wait for their redispatch time: %s",
                len(messages),
                type(lost).__name__,
            )


class Intake:
    """Records and publishes the jobs handed to `submit`, in batches of up to `max_batch`, on
    `lanes` threads (two: one batch is written while the next gathers)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publish: BatchPublisher,
        redispatch_after_s: float,
        lanes: int = 2,
        max_batch: int = 100,
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._redispatch_after_s = redispatch_after_s
        self._batcher: Batcher[JobMessage, NewRow | None] = Batcher(
            self._record, lanes, max_batch, "intake"
        )

    def submit(self, message: JobMessage) -> Future[NewRow | None]:
        """Queue the job; its future holds the new row once recorded and published (None when
        its idempotency key was taken), or the exception that kept it from being recorded."""
        return self._batcher.submit(message)

    def close(self, wait_s: float = 5.0) -> None:
        """Take no more jobs; waits up to `wait_s` for the batches being written."""
        self._batcher.close(wait_s)

    def _record(self, messages: list[JobMessage]) -> list[NewRow | BaseException | None]:
        try:
            rows = self._insert(messages)
            refused: dict[uuid.UUID, BaseException] = {}
        except Exception as exc:
            if len(messages) == 1 or _unreachable(exc):
                raise
            # One job of the batch could not be written (validation lets nothing through that
            # Postgres or the encoder refuses, but a batch must not depend on that), or two
            # lanes deadlocked: each job alone, so only a bad one fails.
            rows, refused = self._insert_each(messages)
        publish_or_defer(self._sessions, self._publish, [m for m in messages if m.job_id in rows])
        return [refused.get(m.job_id) or rows.get(m.job_id) for m in messages]

    def _insert(self, messages: Sequence[JobMessage]) -> dict[uuid.UUID, NewRow]:
        jobs = [repository.NewJob.from_message(message) for message in messages]
        # Keys in one order in every batch: two lanes inserting the same keys in opposite
        # orders would each wait for the other's (ON CONFLICT waits on an uncommitted key).
        jobs.sort(key=lambda job: (job.idempotency_key is None, job.idempotency_key or ""))
        # One statement, so autocommit: a batch is written whole or not at all.
        with unit_of_work(self._sessions, single_statement=True) as session:
            return repository.insert_jobs(session, jobs, self._redispatch_after_s)

    def _insert_each(
        self, messages: Sequence[JobMessage]
    ) -> tuple[dict[uuid.UUID, NewRow], dict[uuid.UUID, BaseException]]:
        rows: dict[uuid.UUID, NewRow] = {}
        refused: dict[uuid.UUID, BaseException] = {}
        for number, message in enumerate(messages):
            try:
                rows |= self._insert([message])
            except Exception as exc:
                refused[message.job_id] = exc
                if _unreachable(exc):  # the rest fail alike; those written are still answered
                    refused |= {later.job_id: exc for later in messages[number + 1 :]}
                    break
        return rows, refused


def _unreachable(exc: Exception) -> bool:
    """Postgres could not be reached: every job of the batch fails alike (the API answers 503).
    A deadlock is an OperationalError too, but one retry of each job alone settles it."""
    rolled_back = isinstance(getattr(exc, "orig", None), TransactionRollback)
    return isinstance(exc, DATABASE_UNREACHABLE) and not rolled_back
