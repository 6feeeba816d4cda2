"""Record an upstream call's outcome in Postgres: store a success, or let the retry policy choose
between scheduling the next attempt and failing the job; each in one guarded transaction."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker import repository
from worker.db import DATABASE_UNREACHABLE, unit_of_work
from worker.llm_client import UpstreamReply, UpstreamTransportError
from worker.payloads import (
    MalformedResponseError,
    ParsedResult,
    parse_error_body,
    parse_result,
    parse_success,
)
from worker.retry_policy import classify_status, decide_after_failure, parse_retry_after
from worker.stream_parsing import AttemptTiming, StreamError, measure_attempt
from worker.timeouts import deadline_error, retry_outlives_deadline


@dataclass(frozen=True)
class RetryConfig:
    """How many attempts, and the backoff's base and cap."""

    max_attempts: int
    base_s: float
    cap_s: float


@dataclass
class Recorder:
    """Writes one worker's outcomes. Each returns the outcome stored (`succeeded`, `retrying`,
    `failed`, `cancelled`), or `superseded` when the attempt is no longer ours."""

    sessions: sessionmaker[Session]
    worker_id: str
    retry: RetryConfig
    rand: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic

    def record(
        self,
        claim: repository.ClaimedJob,
        reply: UpstreamReply | UpstreamTransportError,
        timing: AttemptTiming | None = None,
        expires: float | None = None,
    ) -> str:
        """Record one call's answer (or its transport failure)."""
        read = read_success(claim, reply)
        if isinstance(read, repository.Success):
            return self.store_success(read)
        return self.record_failure(claim, reply, read, timing, expires)

    def record_failure(
        self,
        claim: repository.ClaimedJob,
        reply: UpstreamReply | UpstreamTransportError,
        malformed: MalformedResponseError | None,
        timing: AttemptTiming | None,
        expires: float | None,
    ) -> str:
        """An answer that is no success: a malformed 2xx fails, the rest by the policy."""
        if malformed is not None:
            assert isinstance(reply, UpstreamReply)  # only a 2xx body can be malformed
            return self.fail(claim, _error("malformed_response", str(malformed), reply.status_code))
        error, retryable, retry_after = _describe_failure(reply)
        return self.retry_or_fail(claim, error, retryable, retry_after, timing, expires)

    def record_streamed(
        self,
        claim: repository.ClaimedJob,
        status_code: int,
        result: dict[str, Any],
        timing: Callable[[int | None], AttemptTiming],
    ) -> str:
        """Record a stream that ended well: its assembled result, timed by `timing` once the
        output tokens are known; a result that does not parse fails the job."""
        try:
            parsed = parse_result(claim.kind, result)  # type: ignore[arg-type]
        except MalformedResponseError as exc:
            return self.fail(claim, _error("malformed_response", str(exc), status_code))
        speed = _speed(timing(_output_tokens(parsed)))
        return self.store_success(repository.Success(claim, status_code, result, parsed, *speed))

    def record_broken_stream(
        self,
        claim: repository.ClaimedJob,
        exc: StreamError,
        timing: AttemptTiming,
        expires: float | None,
    ) -> str:
        """A stream that did not deliver a whole answer: nothing of it is kept, and the policy
        decides (by the error's `retryable`) whether the call is made again."""
        error = _error(exc.error_type, str(exc), None)
        return self.retry_or_fail(claim, error, exc.retryable, None, timing, expires)

    def record_cancelled(self, claim: repository.ClaimedJob) -> str:
        """The caller cancelled the job while its call ran."""
        with unit_of_work(self.sessions) as session:
            stored = repository.record_cancelled(session, claim, self.worker_id)
        return "cancelled" if stored else "superseded"

    def store_success(self, success: repository.Success) -> str:
        """`store_successes` for one: its error is raised."""
        (outcome,) = self.store_successes([success])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def store_successes(self, successes: list[repository.Success]) -> list[str | Exception]:
        """Store the successes in one transaction: each `succeeded`, or `superseded` for an
        attempt no longer ours. If the batch fails for anything but an unreachable database,
        each is stored alone, so one bad answer costs only its own job."""
        if not successes:
            return []
        try:
            stored = self._write_successes(successes)
        except DATABASE_UNREACHABLE:
            raise
        except SQLAlchemyError as exc:
            if len(successes) == 1:
                return [exc]
            return [self._store_alone(success) for success in successes]
        return [
            "succeeded" if (s.claim.id, s.claim.attempt) in stored else "superseded"
            for s in successes
        ]

    def _store_alone(self, success: repository.Success) -> str | Exception:
        try:
            return self.store_successes([success])[0]
        except DATABASE_UNREACHABLE as exc:  # tried again for this job alone
            return exc

    def _write_successes(self, successes: list[repository.Success]) -> set[tuple[uuid.UUID, int]]:
        # Without tool calls the batch is one statement (see `record_successes`).
        single = not any(success.parsed.tool_calls for success in successes)
        with unit_of_work(self.sessions, single_statement=single) as session:
            return repository.record_successes(session, self.worker_id, successes)

    def retry_or_fail(
        self,
        claim: repository.ClaimedJob,
        error: dict[str, Any],
        retryable: bool,
        retry_after: float | None,
        timing: AttemptTiming | None = None,
        expires: float | None = None,
    ) -> str:
        """Schedule the next attempt, or fail: out of attempts, not worth retrying, or (given
        the job's deadline at `expires`, on this process' clock) out of time."""
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
            return self.fail(claim, error, timing)
        time_left = None if expires is None else expires - self.clock()
        if retry_outlives_deadline(decision.delay_s, time_left):
            total_s = (claim.timeouts or {}).get("total_s")
            return self.fail(claim, deadline_error(total_s, error), timing)
        with unit_of_work(self.sessions) as session:
            stored = repository.record_retry(
                session,
                claim,
                self.worker_id,
                error,
                decision.delay_s,
                decision.reason,
                *_speed(timing),
            )
        return "retrying" if stored else "superseded"

    def fail(
        self,
        claim: repository.ClaimedJob,
        error: dict[str, Any],
        timing: AttemptTiming | None = None,
    ) -> str:
        """Fail the job with `error`."""
        with unit_of_work(self.sessions) as session:
            stored = repository.record_failure(
                session, claim, self.worker_id, error, *_speed(timing)
            )
        return "failed" if stored else "superseded"


def read_success(
    claim: repository.ClaimedJob, reply: UpstreamReply | UpstreamTransportError
) -> repository.Success | MalformedResponseError | None:
    """The success to store; the reason a 2xx body is unreadable; or None: no success."""
    if (
        not isinstance(reply, UpstreamReply)
        or classify_status(reply.status_code, reply.headers) != "succeeded"
    ):
        return None
    try:
        result, parsed = parse_success(claim.kind, reply.content)  # type: ignore[arg-type]
    except MalformedResponseError as exc:
        return exc
    # The whole answer came at once: no first token to time, a rate over the call.
    timing = measure_attempt(0.0, None, reply.elapsed_s, _output_tokens(parsed))
    return repository.Success(claim, reply.status_code, result, parsed, *_speed(timing))


def _output_tokens(parsed: ParsedResult) -> int | None:
    return parsed.usage.output_tokens if parsed.usage is not None else None


def _speed(timing: AttemptTiming | None) -> tuple[float | None, float | None]:
    """Time to first token and tokens per second, as the `record_*` functions take them."""
    if timing is None:
        return None, None
    return timing.first_token_s, timing.tokens_per_s


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
