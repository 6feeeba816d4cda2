"""Background duties of every worker process: renew leases, reap dead workers' jobs, publish
due jobs. Each is a pass (one transaction) plus a loop that runs it until told to stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kombu.exceptions import KombuError
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api_contracts.jobs import JobTimeouts
from api_contracts.messages import JobMessage
from worker import repository
from worker.db import unit_of_work
from worker.in_flight import InFlight
from worker.models import Job

log = logging.getLogger(__name__)

BATCH = 500


def message_for(job: Job) -> JobMessage:
    """The message that (re)publishes a job row."""
    return JobMessage(
        job_id=job.id,
        kind=job.kind,
        request=job.request,
        model=job.model,
        metadata=job.meta or {},
        priority=job.priority,
        idempotency_key=job.idempotency_key,
        callback_url=job.callback_url,
        submitted_at=job.created_at,
        timeouts=JobTimeouts.model_validate(job.timeouts) if job.timeouts else None,
    )


@dataclass
class Maintenance:
    """The passes, with what they need."""

    sessions: sessionmaker[Session]
    publish: Callable[[JobMessage], None]
    in_flight: InFlight
    worker_id: str
    lease_s: float
    max_lost_attempts: int
    redispatch_after_s: float

    def renew_leases(self) -> int:
        """Tell Postgres this worker still runs its jobs, and learn which were cancelled."""
        with unit_of_work(self.sessions) as session:
            cancelled = repository.renew_leases(
                session, self.in_flight.snapshot(), self.worker_id, self.lease_s
            )
        self.in_flight.cancel(cancelled)
        return len(cancelled)

    def release_in_flight(self) -> int:
        """Hand this worker's running jobs back to the queue."""
        with unit_of_work(self.sessions) as session:
            return repository.release_jobs(session, self.in_flight.snapshot(), self.worker_id)

    def reap(self) -> int:
        """Requeue (or fail) jobs whose worker stopped renewing their lease, and fail waiting
        jobs whose deadline has passed."""
        with unit_of_work(self.sessions) as session:
            reaped = repository.reap_expired_leases(session, self.max_lost_attempts, BATCH)
            expired = repository.expire_overdue_jobs(session, BATCH)
            return len(reaped) + len(expired)

    def dispatch(self) -> int:
        """Publish jobs that are due: retries whose wait is over, reaped jobs, lost publishes.

        If publishing fails the transaction rolls back, so the jobs stay due.
        """
        with unit_of_work(self.sessions) as session:
            due = repository.take_due_jobs(session, self.redispatch_after_s, BATCH)
            for job in due:
                self.publish(message_for(job))
            return len(due)


def run_every(
    interval_s: float, duty: Callable[[], object], stop: threading.Event, name: str
) -> threading.Thread:
    """Run `duty` every `interval_s` in a daemon thread until `stop` is set; errors are logged
    and the loop goes on, since a database or Redis outage must not kill the worker."""

    def loop() -> None:
        failing = False
        while not stop.wait(interval_s):
            try:
                duty()
            except (SQLAlchemyError, RedisError, KombuError, OSError) as exc:
                # One line per outage, not one per pass.
                if not failing:
                    log.warning("%s pass failed: %s; retrying quietly", name, type(exc).__name__)
                failing = True
            except Exception:
                log.exception("%s pass failed", name)
            else:
                if failing:
                    log.warning("%s pass works again", name)
                failing = False

    thread = threading.Thread(target=loop, name=f"gmiq-{name}", daemon=True)
    thread.start()
    return thread
