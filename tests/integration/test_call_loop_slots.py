"""The call loop's slots with jobs claimed ahead of them, against the simulator. The job runner
here is a stand-in that claims and records in memory: what is tested is the loop's own
accounting (which job calls when, and what a stopping process leaves to hand back), not the
store, which the worker tests cover on Postgres."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import pytest

from api_contracts.messages import JobMessage
from worker.call_loop import CallLoop
from worker.jobs import StartedJob
from worker.llm_client import AsyncLLMClient, UpstreamReply, UpstreamTransportError
from worker.payloads import build_upstream_request
from worker.repository import ClaimedJob
from worker.simulator import SimulatorServer
from worker.timeouts import CallLimits, call_limits
from worker.waiting import wait_for

_LIMITS = CallLimits(connect_s=5.0, read_s=10.0, total_s=10.0)
_REQUEST = {"messages": [{"role": "user", "content": "hi"}]}


@dataclass
class _Runner:
    """Claims every job at once, records answers in memory. The jobs claimed first have the
    time left to their deadlines that `deadlines` says, in order; the rest have none."""

    deadlines: list[float | None] = field(default_factory=list)
    worker_id: str = "test-worker"
    lease_s: float = 30.0
    limits: CallLimits = _LIMITS
    events: None = None
    in_flight: set[uuid.UUID] = field(default_factory=set)
    recorded: dict[uuid.UUID, UpstreamReply | UpstreamTransportError] = field(default_factory=dict)

    def clock(self) -> float:
        return time.monotonic()

    def start_many(self, messages: Sequence[JobMessage]) -> list[StartedJob | None]:
        started: list[StartedJob | None] = []
        for message in messages:
            left = self.deadlines.pop(0) if self.deadlines else None
            claim = ClaimedJob(message.job_id, "chat", "m", _REQUEST, 1, None, left)
            path, body = build_upstream_request("chat", _REQUEST, "m")
            self.in_flight.add(claim.id)
            expires = None if left is None else self.clock() + left
            limits = call_limits(self.limits, None, left)
            started.append(StartedJob(claim, path, body, limits, expires, streamed=False))
        return started

    def calling_now(self, job: StartedJob) -> StartedJob:
        if job.expires is None:
            return job
        return replace(job, limits=call_limits(self.limits, None, job.expires - self.clock()))

    def finish_many(
        self, finished: Sequence[tuple[StartedJob, UpstreamReply | UpstreamTransportError]]
    ) -> list[str]:
        for job, reply in finished:
            self.recorded[job.claim.id] = reply
        return ["recorded"] * len(finished)

    def publish_events(self, batches: Sequence[object]) -> list[None]:
        return [None] * len(batches)  # no followers here (`events` is None: never called)

    def end(self, job: StartedJob) -> None:
        self.in_flight.discard(job.claim.id)


def _message() -> JobMessage:
    return JobMessage(job_id=uuid.uuid4(), kind="chat", request=_REQUEST, model="m")


@pytest.fixture
def loop_of(sim: SimulatorServer) -> Iterator[list[CallLoop]]:
    made: list[CallLoop] = []
    yield made
    for calls in made:
        calls.close()


def _start(sim: SimulatorServer, runner: _Runner, capacity: int, made: list[CallLoop]) -> CallLoop:
    def client() -> AsyncLLMClient:
        return AsyncLLMClient(sim.base_url, sim.config.api_key, _LIMITS, 100)

    calls = CallLoop(runner, client, capacity)  # type: ignore[arg-type]
    made.append(calls)
    calls.start()
    return calls


def _claimed_ahead(calls: CallLoop, jobs: int) -> None:
    """As a full process whose slots free fast would: `jobs` more may be claimed ahead."""
    # The pace's own rule is tested in tests/unit/test_claim_ahead.py.
    calls._pace.ahead = jobs


def test_jobs_claimed_ahead_wait_for_slots_and_a_stopping_process_never_calls_them(
    sim: SimulatorServer, loop_of: list[CallLoop]
) -> None:
    runner = _Runner()
    calls = _start(sim, runner, capacity=2, made=loop_of)
    sim.script([{"status": 200, "delay_ms": 1500}] * 4)
    _claimed_ahead(calls, 2)
    messages = [_message() for _ in range(4)]
    for message in messages:
        assert calls.take(message) == "taken"  # two call, two are claimed and wait

    wait_for(lambda: len(runner.in_flight) == 4, 10, "all four claimed")
    wait_for(lambda: len(sim.requests()) == 2, 10, "the first two calls")
    calls.stop_taking()
    calls.stop_claiming(1.0)
    # The two calling finish; the two claimed ahead never call, and stay in flight for the
    # process to hand back (it would otherwise run them under a job already handed back).
    assert calls.drain(10)
    assert len(sim.requests()) == 2
    assert set(runner.recorded) == {m.job_id for m in messages[:2]}
    assert runner.in_flight == {m.job_id for m in messages[2:]}


def test_a_job_claimed_ahead_calls_with_the_time_its_deadline_leaves_when_its_slot_frees(
    sim: SimulatorServer, loop_of: list[CallLoop]
) -> None:
    # The second job has 1 s left at its claim, and waits 1.5 s for the only slot.
    runner = _Runner(deadlines=[None, 1.0])
    calls = _start(sim, runner, capacity=1, made=loop_of)
    sim.script([{"status": 200, "delay_ms": 1500}])
    _claimed_ahead(calls, 1)
    first, second = _message(), _message()
    assert calls.take(first) == "taken"
    assert calls.take(second) == "taken"

    assert calls.drain(10)
    # Out of time by the time its slot freed, the second job's call is not made: it ends as
    # a call that ran out of time, for the retry policy to fail it at its deadline.
    assert isinstance(runner.recorded[first.job_id], UpstreamReply)
    reply = runner.recorded[second.job_id]
    assert isinstance(reply, UpstreamTransportError)
    assert "limit" in str(reply)
    assert len(sim.requests()) == 1
