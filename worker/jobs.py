"""The use case: claim a job, call the upstream, hand the outcome to the recorder and announce it
to followers."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api_contracts.events import FINAL_EVENT, JobStateEvent
from api_contracts.jobs import TERMINAL_STATUSES, ErrorInfo
from api_contracts.messages import JobMessage
from worker import repository
from worker.db import unit_of_work
from worker.in_flight import InFlight
from worker.job_events import JobEventPublisher, NamedEvent, state_event, update_event
from worker.llm_client import UpstreamReply, UpstreamTransportError
from worker.payloads import MalformedResponseError, build_upstream_request
from worker.recording import Recorder, RetryConfig, read_success
from worker.retry_policy import classify_status
from worker.stream_parsing import (
    AttemptTiming,
    StreamAssembler,
    StreamError,
    make_assembler,
    measure_attempt,
    merge_updates,
)
from worker.timeouts import CallLimits, call_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartedJob:
    """A claimed job and its upstream call, ready to make."""

    claim: repository.ClaimedJob
    path: str
    body: bytes
    limits: CallLimits
    # The job's deadline on this process' monotonic clock, if it has one.
    expires: float | None
    streamed: bool

    def running_events(self) -> list[NamedEvent]:
        """What tells followers this attempt has started."""
        return [state_event(JobStateEvent(status="running", attempt=self.claim.attempt))]


@dataclass
class JobRunner:
    """Runs one job message to a recorded outcome; shared by all threads of a worker."""

    sessions: sessionmaker[Session]
    # The upstream limits a call gets unless its job sets its own.
    limits: CallLimits
    retry: RetryConfig
    worker_id: str
    lease_s: float
    redispatch_after_s: float
    in_flight: InFlight = field(default_factory=InFlight)
    rand: Callable[[], float] = random.random
    # Live progress for followers (`GET /v1/jobs/{id}/events`); None publishes nothing.
    events: JobEventPublisher | None = None
    clock: Callable[[], float] = time.monotonic
    # Built from the fields above, so a runner is constructed as it always was.
    recorder: Recorder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.recorder = Recorder(self.sessions, self.worker_id, self.retry, self.rand, self.clock)

    def start_many(self, messages: Sequence[JobMessage]) -> list[StartedJob | Exception | None]:
        """Claim each message's job and build its upstream call (None for a duplicate), the
        claims in one statement. Per message, an exception is that message's alone. A job
        started is in flight (its lease renewed) until `end`. Its "running" event is the
        caller's to publish (`StartedJob.running_events`), ahead of any other of its events:
        off the claim, which a free slot waits for."""
        with unit_of_work(self.sessions, single_statement=True) as session:
            claimed = {
                claim.id: claim
                for claim in repository.claim_jobs(
                    session, [m.job_id for m in messages], self.worker_id, self.lease_s
                )
            }
        started: list[StartedJob | Exception | None] = []
        for message in messages:
            # Not claimed by the batch (or claimed for an earlier copy of the same message):
            # a duplicate, or a Redis-only producer's job that has no row yet.
            claim = claimed.pop(message.job_id, None)
            try:
                if claim is None:
                    claim = self._claim(message)
                started.append(None if claim is None else self._prepare(claim))
            except Exception as exc:
                started.append(exc)
        return started

    def _prepare(self, claim: repository.ClaimedJob) -> StartedJob:
        self.in_flight.add(claim.id)
        try:
            path, body = build_upstream_request(claim.kind, claim.request, claim.model)  # type: ignore[arg-type]
            return StartedJob(
                claim=claim,
                path=path,
                body=body,
                limits=call_limits(self.limits, claim.timeouts, claim.time_left_s),
                expires=None if claim.time_left_s is None else self.clock() + claim.time_left_s,
                streamed=claim.request.get("stream") is True,
            )
        except BaseException:
            self.in_flight.discard(claim.id)
            raise

    def calling_now(self, job: StartedJob) -> StartedJob:
        """The job with its call's limits cut to the time its deadline leaves now: a job
        claimed ahead of its slot waited for it after its limits were set."""
        if job.expires is None:
            return job
        limits = call_limits(self.limits, job.claim.timeouts, job.expires - self.clock())
        return replace(job, limits=limits)

    def finish_many(
        self, finished: Sequence[tuple[StartedJob, UpstreamReply | UpstreamTransportError]]
    ) -> list[str | Exception]:
        """Record each plain call's answer (or its transport failure) and announce the outcome:
        the successes in one transaction and their events in one round trip, the rest one by
        one. Safe to repeat after a database error: each record is guarded. Per call, an
        exception is that call's alone, except that Postgres being unreachable while the
        successes are stored fails them all (none was stored, and all are worth trying
        again)."""
        outcomes: list[str | Exception] = [RuntimeError("not recorded")] * len(finished)
        successes: list[tuple[int, repository.Success]] = []
        failures: list[tuple[int, MalformedResponseError | None]] = []
        for n, (job, reply) in enumerate(finished):
            try:
                read = read_success(job.claim, reply)
            except Exception as exc:  # a body the parser trips on: that job's alone
                outcomes[n] = exc
                continue
            if isinstance(read, repository.Success):
                successes.append((n, read))
            else:
                failures.append((n, read))
        stored = self.recorder.store_successes([success for _, success in successes])
        for (n, _), outcome in zip(successes, stored, strict=True):
            outcomes[n] = outcome
        for n, malformed in failures:
            job, reply = finished[n]
            try:
                outcome = self.recorder.record_failure(
                    job.claim, reply, malformed, None, job.expires
                )
                self._announce(job.claim, outcome)
            except Exception as exc:
                outcomes[n] = exc
            else:
                outcomes[n] = outcome
        self._publish_many(
            [
                (job.claim.id, _succeeded_events(job.claim.attempt))
                for (job, _), outcome in zip(finished, outcomes, strict=True)
                if outcome == "succeeded"
            ]
        )
        return outcomes

    def hand_back(self, job: StartedJob) -> None:
        """Give a claimed job back to the queue without calling it (this process is stopping)."""
        try:
            with unit_of_work(self.sessions) as session:
                repository.release_jobs(session, [job.claim.id], self.worker_id)
        finally:
            self.end(job)

    def end(self, job: StartedJob) -> None:
        """The job is no longer this process's: its lease is not renewed from now on."""
        self.in_flight.discard(job.claim.id)

    def open_stream(self, job: StartedJob) -> StreamRelay:
        """What reads a streamed call's body: assembles it and names the events to publish."""
        return StreamRelay(make_assembler(job.claim.kind), job.claim, self.clock, self.in_flight)

    def finish_streamed(
        self,
        job: StartedJob,
        relay: StreamRelay,
        started: float,
        ended: float,
        reply: UpstreamReply | Exception,
    ) -> str:
        """Record how a streamed call ended and announce it (blocking: Postgres). A broken
        stream is retried whole (nothing of it is kept), like a transport error."""
        claim, expires = job.claim, job.expires
        try:
            if isinstance(reply, Exception):
                raise reply
            if classify_status(reply.status_code, reply.headers) != "succeeded":
                outcome = self.recorder.record(claim, reply, expires=expires)
            else:
                result = relay.assembler.finish()
                timed = partial(relay.timing, started, ended)
                outcome = self.recorder.record_streamed(claim, reply.status_code, result, timed)
        except UpstreamTransportError as exc:
            outcome = self.recorder.record(claim, exc, relay.timing(started, ended, None), expires)
        except StreamError as exc:
            timing = relay.timing(started, ended, None)
            outcome = self.recorder.record_broken_stream(claim, exc, timing, expires)
        except CallCancelledError:
            outcome = self.recorder.record_cancelled(claim)
        self._announce(claim, outcome)
        return outcome

    def publish_events(
        self, batches: Sequence[tuple[uuid.UUID, Sequence[NamedEvent]]]
    ) -> list[None]:
        """Several jobs' events in one round trip (a streamed call's deltas, gathered)."""
        self._publish_many(batches)
        return [None] * len(batches)

    def _publish(self, job_id: uuid.UUID, events: list[NamedEvent]) -> None:
        self._publish_many([(job_id, events)])

    def _publish_many(self, batches: Sequence[tuple[uuid.UUID, Sequence[NamedEvent]]]) -> None:
        if self.events is None or not batches:
            return
        try:
            self.events.publish_many(batches)
        except Exception:  # live events are a convenience: never a reason to lose a job
            log.exception("job events of %d jobs not published", len(batches))

    def _announce(self, claim: repository.ClaimedJob, outcome: str) -> None:
        """Tell followers where the job now stands; a terminal state adds the final event,
        whose view the events API reads from Postgres when it delivers it."""
        if self.events is None or outcome not in ("succeeded", "failed", "retrying", "cancelled"):
            return
        if outcome == "succeeded":  # the common case needs no read
            self._publish(claim.id, _succeeded_events(claim.attempt))
            return
        try:
            with self.sessions() as session:
                job = repository.get_job(session, claim.id)
                if job is None:
                    return
                error = ErrorInfo.model_validate(job.error) if job.error else None
                state = JobStateEvent(status=job.status, attempt=claim.attempt, error=error)
        except SQLAlchemyError as exc:
            log.warning("state of job %s not announced: %s", claim.id, type(exc).__name__)
            return
        events = [state_event(state)]
        if state.status in TERMINAL_STATUSES:
            events.append((FINAL_EVENT, state))
        self.events.publish(claim.id, events)

    def _claim(self, message: JobMessage) -> repository.ClaimedJob | None:
        # Autocommit: the claim is one statement; a Redis-only producer's job is inserted and
        # claimed by statements that are each safe alone (the insert skips a row that exists,
        # the claim's status guard lets one claimant win).
        with unit_of_work(self.sessions, single_statement=True) as session:
            claim = repository.claim_job(session, message.job_id, self.worker_id, self.lease_s)
            # A duplicate or redelivered message: the job exists (only its status is read).
            if claim is not None or repository.get_job_status(session, message.job_id):
                return claim
            # A producer that only has Redis: the message is the job.
            repository.insert_job(
                session, repository.NewJob.from_message(message), self.redispatch_after_s
            )
            return repository.claim_job(session, message.job_id, self.worker_id, self.lease_s)


class CallCancelledError(Exception):
    """The caller cancelled the job while its call was streaming."""


@dataclass
class StreamRelay:
    """Feeds a streamed body to the assembler; what each read makes visible becomes one batch
    of events for followers, tagged with the attempt."""

    assembler: StreamAssembler
    claim: repository.ClaimedJob
    clock: Callable[[], float]
    in_flight: InFlight
    first_token_at: float | None = None

    def take(self, chunk: bytes) -> list[NamedEvent]:
        """The events this chunk makes visible; raises if the caller cancelled the job (between
        chunks is a safe point: nothing of the call is kept yet) or the stream is broken."""
        if self.in_flight.is_cancelled(self.claim.id):
            raise CallCancelledError
        updates = self.assembler.feed(chunk)
        if not updates:
            return []
        if self.first_token_at is None:
            self.first_token_at = self.clock()
        attempt = self.claim.attempt
        return [update_event(u, attempt) for u in merge_updates(updates)]

    def timing(self, started: float, finished: float, output_tokens: int | None) -> AttemptTiming:
        return measure_attempt(started, self.first_token_at, finished, output_tokens)


def _succeeded_events(attempt: int) -> list[NamedEvent]:
    done = JobStateEvent(status="succeeded", attempt=attempt)
    return [state_event(done), (FINAL_EVENT, done)]
