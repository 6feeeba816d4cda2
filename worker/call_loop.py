"""Where a worker process keeps its upstream calls in flight: one event loop for plain calls.

An LLM job is almost all waiting. With a thread per call, hundreds of threads wake for every
byte and fight over the GIL, and the process tops out far below what the upstream allows (see
docs/performance.md). Here Celery's few threads only take messages: each waits until the process
has room, queues the job's claim and hands the job over, and its call and record run as one
task on the loop, so hundreds of calls wait there. A taker does not wait for the claim: at 1,000
in flight, 16 takers each waiting on a claim statement were what bounded a process. Claims and
records are blocking database work, done in batches on a few threads of their own (`Batcher`):
the claims that queue while a claim runs are made in one statement, the answers that arrive
while a record runs are stored in one transaction, so the round trips per job fall as the load
grows, and the loop never waits on Postgres. A record is tried again while Postgres is briefly
unreachable rather than paying for the call twice, and a claim too, its job still counted
against the process' room. Streamed calls wait on the same loop: the deltas each read makes
visible go to followers through one more batcher (the events of every stream that read
something while the last batch was written, in one Redis round trip), and the stream's outcome is
recorded on a small pool of threads.

A message handed over is acknowledged at once, so Celery's prefetch moves on, but the task
holds the acknowledgement's write to Redis until the claim has run (`settled`, see
`broker_batches.hold_ack`): a Redis-only producer's job has no row until its claim, so its
message stays in the unacknowledged set until then, and a process that dies or stops first
leaves it to be restored after the visibility timeout. From the claim on, Postgres keeps the
job: its lease is renewed while it runs and taken back by the reaper once it lapses, as for any
running job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Literal

import uvloop

from api_contracts.messages import JobMessage
from worker.batcher import Batcher, BatcherClosedError
from worker.claim_ahead import ClaimPace
from worker.db import DATABASE_UNREACHABLE
from worker.job_events import NamedEvent
from worker.jobs import CallCancelledError, JobRunner, StartedJob
from worker.llm_client import AsyncLLMClient, UpstreamReply, UpstreamTransportError
from worker.stream_parsing import StreamError

log = logging.getLogger(__name__)

Reply = UpstreamReply | UpstreamTransportError

# Two lanes each: a batch can start while another waits on Postgres, so one slow statement does
# not hold up the rest; more lanes would only make the batches smaller.
_LANES = 2
# Claims per statement at most: every slot may be waiting on a claim at once.
_MAX_CLAIMS = 64
# Records per transaction at most: a bigger batch is one long statement holding its rows' locks.
_MAX_RECORDS = 64
# Streams' event batches per Redis round trip (one script call) at most.
_MAX_EVENT_BATCHES = 256


# Where a taken job is: what its end gives back (`CallLoop._release`).
_Phase = Literal["claiming", "calling", "recording"]


class _NoNewCallsError(Exception):
    """A job claimed ahead of its slot, as the process stops making calls."""


@dataclass(frozen=True)
class _Taken:
    """A job handed to the loop: its message, its claim under way, when it was taken (on the
    monotonic clock), and what to call once the claim has run."""

    message: JobMessage
    claim: Future[StartedJob | None]
    at: float
    settled: Callable[[], None]


@dataclass(frozen=True)
class Offered:
    """A job offered from Celery's consumer (`job_strategy`), with what its message needs:
    `hold` before its claim is queued (the acknowledgement's write then waits for `settled`,
    called once the claim has run), and `accept` once the job is handed over (acknowledges the
    message). An offer still waiting when the process stops is never accepted: its message
    stays unacknowledged, and Redis gets it back (kombu restores it as the consumer closes)."""

    message: JobMessage
    hold: Callable[[], None]
    settled: Callable[[], None]
    accept: Callable[[], None]


class CallLoop:
    """At most `capacity` upstream calls in flight in this process, all waiting on one event
    loop. A call's slot is free again as soon as its answer is in: recording it (a batch
    statement that may wait for a lane) does not hold the upstream idle, and the next call
    need not wait for its claim either: a full process claims a few jobs ahead, as many as it
    expects slots to free during a claim (`claim_ahead`), and a slot that frees goes to the
    first of them at once. Jobs whose answers wait to be recorded are bounded too, by as many
    again, so a slow Postgres stops the process taking jobs instead of piling answers up in
    memory."""

    def __init__(
        self,
        runner: JobRunner,
        make_client: Callable[[], AsyncLLMClient],
        capacity: int,
    ) -> None:
        self._runner = runner
        self._make_client = make_client
        self._capacity = capacity
        # Jobs taken and not yet recorded; of those, the ones calling hold a slot, and the ones
        # claiming (or claimed, waiting for a slot) will.
        self._busy = 0
        self._calling = 0
        self._claiming = 0
        # Claimed ahead of the free slots, at most a quarter of them (see `claim_ahead`).
        self._pace = ClaimPace(capacity // 4)
        # Claimed jobs waiting for a slot, first come first served (on the loop's thread).
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # Jobs offered while the process had no room, first come first served, and whether
        # the loop is already due to take the ones there is room for.
        self._offers: deque[Offered] = deque()
        self._admitting = False
        self._closing = False
        # Set as the claims stop: a job claimed ahead no longer starts its call (the process
        # is about to hand its jobs back).
        self._no_new_calls = False
        # One lock, two conditions: a freed slot wakes one taker, not all of them and the
        # drain. Waking every taker for every call that ended (hundreds a second, each taker
        # then queueing for the GIL) delayed the loop itself by 15-30 ms a turn.
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._emptied = threading.Condition(self._lock)
        self._loop = uvloop.new_event_loop()
        # A daemon, so a worker that fails before `close` still exits.
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gmiq-calls", daemon=True
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: AsyncLLMClient | None = None
        self._claims: Batcher[JobMessage, StartedJob | None] = Batcher(
            runner.start_many, _LANES, _MAX_CLAIMS, "gmiq-claim"
        )
        self._records: Batcher[tuple[StartedJob, Reply], str] = Batcher(
            runner.finish_many, _LANES, _MAX_RECORDS, "gmiq-record"
        )
        # One lane: a stream awaits each batch before its next read, so its events stay in
        # order; one lane also keeps every batch as large as the load makes it.
        self._events: Batcher[tuple[uuid.UUID, Sequence[NamedEvent]], None] = Batcher(
            runner.publish_events, 1, _MAX_EVENT_BATCHES, "gmiq-events"
        )
        self._stream_records = ThreadPoolExecutor(_LANES, thread_name_prefix="gmiq-stream-record")

    def start(self) -> None:
        """Run the loop and open the upstream client on it (aiohttp wants its own loop)."""
        self._thread.start()
        self._client = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    async def _open(self) -> AsyncLLMClient:
        return self._make_client()

    def take(self, message: JobMessage, settled: Callable[[], None] = lambda: None) -> str:
        """Hand the message's job over: its claim, call and record run on the loop. Waits
        while every slot is taken and the jobs claimed ahead are as many as slots are expected
        to free during a claim, so a full process takes no more jobs than it will start within
        about a claim's time; does not wait for the claim, so a few takers keep the claim
        batches full. `settled` is called once the claim has run (claimed, a duplicate, or
        failed for good), not if the process stops first: until then the message is the only
        copy of a Redis-only producer's job. Returns `taken`, or `refused` (the process is
        stopping: the message must go back to its queue)."""
        if not self._acquire():
            return "refused"
        self._hand_over(message, settled)
        return "taken"

    def offer(self, offered: Offered) -> bool:
        """Take the job now if the process has room, else keep it, first come first served,
        until a slot frees; never waits. False if the process is stopping (nothing was kept:
        the caller gives the message back)."""
        with self._lock:
            if self._closing:
                return False
            if self._offers or not self._has_room():
                self._offers.append(offered)
                return True
            self._claiming += 1
            self._busy += 1
        self._start(offered)
        return True

    def drop_offers(self) -> int:
        """Forget the offers still waiting (the consumer that delivered them is stopping, and
        kombu puts their messages back as its channel closes); returns how many."""
        with self._lock:
            dropped = len(self._offers)
            self._offers.clear()
            return dropped

    def _start(self, offered: Offered) -> None:
        """(Room acquired.) Hand an offered job over and acknowledge its message."""
        offered.hold()
        self._hand_over(offered.message, offered.settled)
        offered.accept()

    def _admit_offers(self) -> None:
        """(On the loop.) Take the jobs offered for as long as there is room."""
        with self._lock:
            self._admitting = False
            admitted: list[Offered] = []
            while self._offers and not self._closing and self._has_room():
                admitted.append(self._offers.popleft())
                self._claiming += 1
                self._busy += 1
        for offered in admitted:
            # One offer that fails must not strand the rest (their room would never return).
            # A hand-over that fails gives its room back itself; the message stays
            # unacknowledged, so Redis delivers it again.
            try:
                self._start(offered)
            except Exception:
                log.exception("job %s: offer not taken", offered.message.job_id)

    def _room_freed(self, count: int = 1) -> None:
        """(Holding the lock.) Room for `count` more jobs: the offers kept are taken first,
        on the loop; takers waiting are woken too (whoever comes first takes it)."""
        if self._offers and not self._admitting:
            self._admitting = True
            if threading.get_ident() == self._thread.ident:
                self._loop.call_soon(self._admit_offers)
            else:
                try:
                    self._loop.call_soon_threadsafe(self._admit_offers)
                except RuntimeError:  # the loop is closed: nothing more is taken
                    self._admitting = False
        self._slot_freed.notify(count)

    def _hand_over(self, message: JobMessage, settled: Callable[[], None]) -> None:
        """(A slot's room acquired.) Queue the claim and start the job's task on the loop."""
        taken_at = time.monotonic()
        # The claim is queued from here, not from the loop: it runs while the loop picks the
        # job up, instead of after (the hand-over took 4-6 ms a job at 200 in flight).
        claim = self._claims.submit(message)
        try:
            self._loop.call_soon_threadsafe(self._spawn, _Taken(message, claim, taken_at, settled))
        except BaseException:  # the loop is closed
            if not claim.cancel():  # already claiming: a job claimed is left to its lease
                claim.add_done_callback(self._abandon)
            self._release("claiming")
            raise

    def stop_taking(self) -> None:
        """Refuse new jobs from now on: the offers waiting are dropped (their messages were
        never acknowledged), and takers waiting for a slot give their messages back."""
        with self._lock:
            self._closing = True
            # Never accepted, so their messages are still unacknowledged: kombu restores them
            # as the consumer closes (or the visibility sweep does, if the process dies first).
            self._offers.clear()
            self._slot_freed.notify_all()

    def stop_claiming(self, wait_s: float) -> None:
        """Make no more claims, and wait up to `wait_s` for those running: a claim that
        landed after the jobs in flight were handed back would leave its job running under a
        stopped process until its lease ran out. The jobs not claimed stay restorable. The
        jobs claimed ahead of a slot do not start their calls any more: they stay in flight, to
        be handed back with the rest."""
        with self._lock:
            self._no_new_calls = True
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                self._loop.call_soon_threadsafe(self._refuse_waiters)
        self._claims.close(wait_s)

    def in_flight(self) -> int:
        """Jobs this process has taken and not yet finished (recorded)."""
        with self._lock:
            return self._busy

    def drain(self, timeout_s: float) -> bool:
        """Wait until every job taken has finished, or the time is up; True if all finished."""
        with self._lock:
            return self._emptied.wait_for(lambda: self._busy == 0, timeout_s)

    def close(self) -> None:
        """Stop the loop: calls still running are abandoned (the caller hands their jobs back
        first); the upstream client's connections close."""
        self.stop_taking()
        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        finally:
            if self._thread.ident is not None:  # started (a runtime may close unstarted)
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()
            self._claims.close()
            self._records.close()
            self._events.close()
            self._stream_records.shutdown(wait=False, cancel_futures=True)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def _has_room(self) -> bool:
        """(Holding the lock.) Room for one more job: a slot free or about to be (the jobs
        claimed ahead stay within the pace), and answers waiting to be recorded bounded."""
        return (
            self._calling + self._claiming < self._capacity + self._pace.ahead
            and self._busy < 2 * self._capacity
        )

    def _acquire(self) -> bool:
        with self._lock:
            self._slot_freed.wait_for(lambda: self._closing or self._has_room())
            if self._closing:
                return False
            self._claiming += 1
            self._busy += 1
            return True

    def _free_slot(self) -> None:
        """(Holding the lock, on the loop.) The slot goes to the first claimed job waiting."""
        rose = self._pace.slot_freed()
        while self._slot_waiters and not self._no_new_calls:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():  # not cancelled
                waiter.set_result(None)
                self._claiming -= 1
                break
        else:
            self._calling -= 1
        # Every taker waits for the same thing: if the one woken cannot go, none could. A
        # pace that rose lets as many more in.
        self._room_freed(1 + rose)

    def _abandon(self, claim: Future[StartedJob | None]) -> None:
        """A claim whose job will never be called: no lease renewal, so the reaper takes the
        job back once its lease lapses, as for a process that died."""
        if not claim.cancelled() and claim.exception() is None:
            job = claim.result()
            if job is not None:
                self._runner.end(job)

    def _refuse_waiters(self) -> None:
        """(On the loop.) The jobs waiting for a slot will not get one: the process stops."""
        with self._lock:
            while self._slot_waiters:
                waiter = self._slot_waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(_NoNewCallsError("stopping"))

    def _called(self) -> None:
        with self._lock:
            self._free_slot()

    async def _take_slot(self) -> None:
        """Wait for a call slot (a claimed job, on the loop). Raises `_NoNewCallsError` once
        the process stops making calls."""
        with self._lock:
            if self._no_new_calls:
                raise _NoNewCallsError("stopping")
            if self._calling < self._capacity and not self._slot_waiters:
                self._calling += 1
                self._claiming -= 1
                return
            waiter = self._loop.create_future()
            self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if waiter.done() and not waiter.cancelled():  # handed a slot: pass it on
                    self._claiming += 1
                    self._free_slot()
            raise
        with self._lock:
            if self._no_new_calls:  # handed a slot as the claims stopped: pass it on
                self._claiming += 1
                self._free_slot()
                raise _NoNewCallsError("stopping")

    def _release(self, phase: _Phase) -> None:
        with self._lock:
            self._busy -= 1
            if phase == "calling":
                self._free_slot()
            else:
                if phase == "claiming":
                    self._claiming -= 1
                self._room_freed()
            if self._busy == 0:
                self._emptied.notify_all()

    def _spawn(self, taken: _Taken) -> None:
        task = self._loop.create_task(self._run(taken))
        # The loop keeps only weak references to its tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, taken: _Taken) -> None:
        message, settled = taken.message, taken.settled
        phase: _Phase = "claiming"
        job: StartedJob | None = None
        try:
            try:
                job = await self._claim(taken)
            except BatcherClosedError:
                raise  # stopping: not settled, the message stays restorable
            except Exception:
                settled()  # failed for good: as a task that raised, acknowledged
                raise
            settled()
            if job is None:
                log.info(
                    "job %s: skipped (a duplicate, or not this process' to run)", message.job_id
                )
                return
            # Announced as claimed (a job claimed ahead is running), so the events of a claim
            # batch go out together; a slot waits for neither.
            announced = self._announce(job)
            try:
                await self._take_slot()
            except _NoNewCallsError:
                # Left in flight, uncalled: the stopping process hands it back with the rest.
                log.warning("job %s: not called, the process is stopping", job.claim.id)
                job = None
                return
            phase = "calling"
            job = self._runner.calling_now(job)
            record = await (self._stream(job) if job.streamed else self._call(job))
            self._called()
            phase = "recording"
            if announced is not None:  # its "running" event goes before its outcome's
                await asyncio.wrap_future(announced)
            outcome = await record()
            log.info("job %s: %s", job.claim.id, outcome)
        except BatcherClosedError:
            # Stopping: a job not claimed keeps its message restorable (not settled), one not
            # recorded is taken back when its lease lapses.
            log.warning("job %s: stopped before its end", message.job_id)
        except Exception:
            if job is None:
                log.exception("job %s: not started", message.job_id)
            else:
                # Not recorded: the job stays running until its lease runs out and the
                # reaper takes it back, like a job whose worker died.
                log.exception("job %s: outcome not recorded", job.claim.id)
        finally:
            if job is not None:
                self._runner.end(job)
            self._release(phase)

    def _announce(self, job: StartedJob) -> Future[None] | None:
        """Publish the job's "running" event once it is claimed, outside the claim statement
        (the events' round trip was half of a claim's time at 1,000 in flight). Through the
        events lane, so a stream's deltas follow it, and the events of one claim batch go out
        in one round trip."""
        if self._runner.events is None:
            return None
        return self._events.submit((job.claim.id, job.running_events()))

    async def _claim(self, taken: _Taken) -> StartedJob | None:
        """The message's job as its claim claimed it (None: a duplicate). While Postgres is
        unreachable, claim again with backoff, until the process stops."""
        message, claim = taken.message, taken.claim
        delay_s = 0.5
        outage = False
        while True:
            try:
                job = await asyncio.wrap_future(claim)
            except DATABASE_UNREACHABLE as exc:
                log.warning(
                    "job %s: not claimed yet (%s); trying again in %g s",
                    message.job_id,
                    type(exc).__name__,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                claim = self._claims.submit(message)
                outage = True
                continue
            if not outage:  # a claim that waited out an outage says nothing of their pace
                with self._lock:
                    if rose := self._pace.claimed(taken.at):
                        self._room_freed(rose)
            return job

    async def _call(self, job: StartedJob) -> Callable[[], Awaitable[str]]:
        """Make the call; returns what records its outcome."""
        assert self._client is not None  # opened by start()
        try:
            reply: Reply = await self._client.post(job.path, job.body, job.limits)
        except UpstreamTransportError as exc:
            reply = exc
        return partial(self._finish, job, reply)

    async def _stream(self, job: StartedJob) -> Callable[[], Awaitable[str]]:
        """Read the stream, relaying its deltas; returns what records its outcome."""
        assert self._client is not None  # opened by start()
        relay = self._runner.open_stream(job)
        publishing = self._runner.events is not None

        async def feed(chunk: bytes) -> None:
            events = relay.take(chunk)
            if events and publishing:
                await asyncio.wrap_future(self._events.submit((job.claim.id, events)))

        started = self._runner.clock()
        reply: UpstreamReply | Exception
        try:
            reply = await self._client.stream(job.path, job.body, feed, job.limits)
        except (UpstreamTransportError, StreamError, CallCancelledError) as exc:
            reply = exc
        finish = partial(
            self._runner.finish_streamed, job, relay, started, self._runner.clock(), reply
        )
        return partial(self._loop.run_in_executor, self._stream_records, finish)

    async def _finish(self, job: StartedJob, reply: Reply) -> str:
        """Record the answer. While Postgres is unreachable, try again with backoff for up to
        the lease (which the heartbeat renews once Postgres is back): calling the upstream
        again would pay for the answer twice."""
        delay_s = 0.5
        give_up_at = self._loop.time() + self._runner.lease_s
        while True:
            try:
                return await asyncio.wrap_future(self._records.submit((job, reply)))
            except DATABASE_UNREACHABLE as exc:
                if self._loop.time() + delay_s > give_up_at:
                    raise
                log.warning(
                    "job %s: answer not recorded yet (%s); trying again in %g s",
                    job.claim.id,
                    type(exc).__name__,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
