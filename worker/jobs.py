"""The use case: claim a job, call the upstream, record the outcome in one transaction."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api_contracts.messages import JobMessage
from worker import repository
from worker.db import unit_of_work
from worker.llm_client import LLMClient, UpstreamReply, UpstreamTransportError
from worker.payloads import (
    MalformedResponseError,
    build_upstream_request,
    parse_error_body,
    parse_success,
)
from worker.retry_policy import classify_status, decide_after_failure, parse_retry_after

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryConfig:
    """How many attempts, and the backoff's base and cap."""

    max_attempts: int
    base_s: float
    cap_s: float


class InFlight:
    """The ids of the jobs this process is running, for the lease heartbeat."""

    def __init__(self) -> None:
        self._ids: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def snapshot(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._ids)


@dataclass
class JobRunner:
    """Runs one job message to a recorded outcome; shared by all threads of a worker."""

    sessions: sessionmaker[Session]
    client: LLMClient
    retry: RetryConfig
    worker_id: str
    lease_s: float
    redispatch_after_s: float
    in_flight: InFlight = field(default_factory=InFlight)
    rand: Callable[[], float] = random.random

    def run(self, message: JobMessage) -> str:
        """Process the message; returns what happened (`skipped` for a duplicate)."""
        claim = self._claim(message)
        if claim is None:
            return "skipped"
        self.in_flight.add(claim.id)
        try:
            path, body = build_upstream_request(claim.kind, claim.request, claim.model)  # type: ignore[arg-type]
            try:
                reply: UpstreamReply | UpstreamTransportError = self.client.post(path, body)
            except UpstreamTransportError as exc:
                reply = exc
            return self._record(claim, reply)
        finally:
            self.in_flight.discard(claim.id)

    def _claim(self, message: JobMessage) -> repository.ClaimedJob | None:
        with unit_of_work(self.sessions) as session:
            claim = repository.claim_job(session, message.job_id, self.worker_id, self.lease_s)
            if claim is not None or repository.get_job(session, message.job_id) is not None:
                return claim
            # A producer that only has Redis: the message is the job.
            repository.insert_job(
                session, repository.NewJob.from_message(message), self.redispatch_after_s
            )
            return repository.claim_job(session, message.job_id, self.worker_id, self.lease_s)

    def _record(
        self, claim: repository.ClaimedJob, reply: UpstreamReply | UpstreamTransportError
    ) -> str:
        if (
            isinstance(reply, UpstreamReply)
            and classify_status(reply.status_code, reply.headers) == "succeeded"
        ):
            try:
                result, parsed = parse_success(claim.kind, reply.content)  # type: ignore[arg-type]
            except MalformedResponseError as exc:
                error = _error("malformed_response", str(exc), reply.status_code)
                return self._fail(claim, error)
            with unit_of_work(self.sessions) as session:
                stored = repository.record_success(
                    session, claim, self.worker_id, reply.status_code, result, parsed
                )
            return "succeeded" if stored else "superseded"
        error, retryable, retry_after = _describe_failure(reply)
        decision = decide_after_failure(
            claim.attempt,
            self.retry.max_attempts,
            retryable,
            retry_after,
            self.retry.base_s,
            self.retry.cap_s,
            self.rand(),
        )
        if decision.verdict == "fail":
            return self._fail(claim, error)
        with unit_of_work(self.sessions) as session:
            stored = repository.record_retry(
                session, claim, self.worker_id, error, decision.delay_s, decision.reason
            )
        return "retrying" if stored else "superseded"

    def _fail(self, claim: repository.ClaimedJob, error: dict[str, Any]) -> str:
        with unit_of_work(self.sessions) as session:
            stored = repository.record_failure(session, claim, self.worker_id, error)
        return "failed" if stored else "superseded"


def _error(error_type: str, message: str, status_code: int | None) -> dict[str, Any]:
    return {"type": error_type, "message": message, "status_code": status_code}


def _describe_failure(
    reply: UpstreamReply | UpstreamTransportError,
) -> tuple[dict[str, Any], bool, float | None]:
    """The error to record, whether it is worth retrying, and any wait the upstream asked for."""
    if isinstance(reply, UpstreamTransportError):
        return _error(reply.error_type, str(reply), None), True, None
    upstream_type, message = parse_error_body(reply.content)
    error = _error(
        upstream_type or f"http_{reply.status_code}",
        message or f"upstream answered HTTP {reply.status_code}",
        reply.status_code,
    )
    retryable = classify_status(reply.status_code, reply.headers) == "retry"
    return error, retryable, parse_retry_after(reply.headers, datetime.now(UTC))
