"""Claims and records made in batches: one statement claims only the jobs that are ours to
claim, a batch of answers stores each job whole (or, if no longer ours, not at all), and one
answer Postgres refuses costs only its own job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine, Row, text

from api_contracts.jobs import JobSubmitRequest
from api_contracts.messages import JobMessage
from tests.conftest import count_rows
from worker import repository
from worker.celery_app import create_celery_app
from worker.db import unit_of_work
from worker.job_events import events_key
from worker.jobs import JobRunner, StartedJob
from worker.llm_client import UpstreamReply
from worker.producer import JobProducer
from worker.runtime import WorkerRuntime, build_runtime
from worker.settings import Settings
from worker.simulator.answers import build_chat_completion

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def runtime(deployment: Callable[..., Settings]) -> Iterator[WorkerRuntime]:
    """A worker's runtime in this process (no Celery consumer, no background loops)."""
    settings = deployment()
    runtime = build_runtime(settings, create_celery_app(settings), concurrency=8)
    try:
        yield runtime
    finally:
        runtime.shutdown()
        runtime.runner.sessions.kw["bind"].dispose()


class Producer:
    """Submits jobs and keeps their messages instead of publishing them."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.messages: list[JobMessage] = []
        self.producer = JobProducer(
            runtime.runner.sessions, self.messages.append, runtime.settings.default_model
        )

    def submit(self, tools: bool = False) -> JobMessage:
        request: dict[str, Any] = {"messages": [{"role": "user", "content": "weather in Oslo?"}]}
        if tools:
            request["tools"] = [WEATHER_TOOL]
            request["tool_choice"] = "required"
        self.producer.submit(JobSubmitRequest.model_validate({"kind": "chat", "request": request}))
        return self.messages[-1]


@pytest.fixture
def producer(runtime: WorkerRuntime, engine: Engine) -> Iterator[Producer]:
    """A producer whose jobs are deleted after the test: jobs left queued or running in the
    shared database would be picked up by later tests' workers (dispatcher, reaper)."""
    made = Producer(runtime)
    yield made
    with engine.begin() as connection:
        connection.execute(
            text("DELETE FROM job WHERE id = ANY(:ids)"),
            {"ids": [message.job_id for message in made.messages]},
        )


def answer(job: StartedJob, content: str | None = None) -> UpstreamReply:
    """The simulator's own answer to the job's request (optionally with other text)."""
    body = build_chat_completion(orjson.loads(job.body), time.time())
    if content is not None:
        body["choices"][0]["message"]["content"] = content
    return UpstreamReply(200, {"content-type": "application/json"}, orjson.dumps(body), 0.5)


def select(engine: Engine, query: str, **params: Any) -> list[Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(text(query), params))


def started(runner: JobRunner, messages: list[JobMessage]) -> list[StartedJob]:
    """Claims the messages' jobs and announces them, as a call loop does."""
    jobs = runner.start_many(messages)
    assert all(isinstance(job, StartedJob) for job in jobs), jobs
    claimed = [job for job in jobs if isinstance(job, StartedJob)]
    runner.publish_events([(job.claim.id, job.running_events()) for job in claimed])
    return claimed


def test_one_claim_statement_claims_only_the_jobs_that_are_ours_to_claim(
    runtime: WorkerRuntime,
    producer: Producer,
    engine: Engine,
) -> None:
    queued, taken, cancelled = (producer.submit() for _ in range(3))
    with unit_of_work(runtime.runner.sessions) as session:
        assert repository.claim_job(session, taken.job_id, "another-worker", 60)
        repository.cancel_job(session, cancelled.job_id)

    with unit_of_work(runtime.runner.sessions, single_statement=True) as session:
        ids = [queued.job_id, taken.job_id, cancelled.job_id, uuid.uuid4(), queued.job_id]
        claims = repository.claim_jobs(session, ids, runtime.runner.worker_id, 60)

    assert [(claim.id, claim.attempt) for claim in claims] == [(queued.job_id, 1)]
    assert count_rows(engine, "attempt", "job_id = :id", id=queued.job_id) == 1
    ids = [queued.job_id, taken.job_id]
    owners = dict(select(engine, "SELECT id, worker_id FROM job WHERE id = ANY(:ids)", ids=ids))
    assert owners == {queued.job_id: runtime.runner.worker_id, taken.job_id: "another-worker"}


def test_a_batch_with_the_same_message_twice_starts_the_job_once(
    runtime: WorkerRuntime,
    producer: Producer,
) -> None:
    message = producer.submit()
    first, second = runtime.runner.start_many([message, message])
    assert isinstance(first, StartedJob)
    assert second is None


def test_a_batch_of_answers_stores_each_job_whole_and_skips_one_no_longer_ours(
    runtime: WorkerRuntime,
    producer: Producer,
    engine: Engine,
    redis_client: redis.Redis,
) -> None:
    messages = [producer.submit(tools=True), producer.submit(), producer.submit()]
    # Wants a webhook (set directly: submission would check the receiver's address).
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE job SET callback_url = 'https://example.com/hook' WHERE id = :id"),
            {"id": messages[0].job_id},
        )
    with_tools, plain, reaped = started(runtime.runner, messages)
    # The third one's lease ran out and the reaper took it back meanwhile.
    with unit_of_work(runtime.runner.sessions) as session:
        repository.release_jobs(session, [reaped.claim.id], runtime.runner.worker_id)

    outcomes = runtime.runner.finish_many(
        [(job, answer(job)) for job in (with_tools, plain, reaped)]
    )

    assert outcomes == ["succeeded", "succeeded", "superseded"]
    query = "SELECT id, status, output_text, result FROM job WHERE id = ANY(:ids)"
    rows = {row.id: row for row in select(engine, query, ids=[m.job_id for m in messages])}
    assert rows[plain.claim.id].status == "succeeded"
    assert rows[plain.claim.id].output_text
    assert rows[with_tools.claim.id].result["choices"][0]["message"]["tool_calls"]
    assert rows[reaped.claim.id].status == "queued"
    assert rows[reaped.claim.id].result is None
    for job, stored in ((with_tools, 1), (plain, 1), (reaped, 0)):
        where = "job_id = :id"
        assert count_rows(engine, "usage", where, id=job.claim.id) == stored
        closed = "job_id = :id AND outcome = 'succeeded' AND status_code = 200"
        assert count_rows(engine, "attempt", closed, id=job.claim.id) == stored
    # The database is the whole session's: count only this batch's rows.
    others = "job_id = ANY(:ids) AND job_id <> :id"
    batch = {"ids": [m.job_id for m in messages], "id": with_tools.claim.id}
    assert count_rows(engine, "tool_call", "job_id = :id", id=with_tools.claim.id) == 1
    assert count_rows(engine, "tool_call", others, **batch) == 0
    assert count_rows(engine, "webhook_event", "job_id = :id", id=with_tools.claim.id) == 1
    assert count_rows(engine, "webhook_event", others, **batch) == 0

    prefix = runtime.settings.redis_prefix
    for job in (with_tools, plain):
        names = [f[b"type"] for _, f in redis_client.xrange(events_key(prefix, job.claim.id))]
        assert names == [b"state", b"state", b"job"]  # running, succeeded, the final view
    assert [f[b"type"] for _, f in redis_client.xrange(events_key(prefix, reaped.claim.id))] == [
        b"state"
    ]  # running only: no success was stored for it


def test_one_answer_postgres_refuses_costs_only_its_own_job(
    runtime: WorkerRuntime,
    producer: Producer,
    engine: Engine,
) -> None:
    jobs = started(runtime.runner, [producer.submit() for _ in range(3)])
    # Postgres' text and jsonb cannot hold NUL: this answer can never be stored.
    replies = [answer(jobs[0]), answer(jobs[1], content="bad \x00 byte"), answer(jobs[2])]

    outcomes = runtime.runner.finish_many(list(zip(jobs, replies, strict=True)))

    assert outcomes[0] == outcomes[2] == "succeeded"
    assert isinstance(outcomes[1], Exception)
    succeeded = "id = ANY(:ids) AND status = 'succeeded'"
    assert count_rows(engine, "job", succeeded, ids=[jobs[0].claim.id, jobs[2].claim.id]) == 2
    assert count_rows(engine, "job", "id = :id AND status = 'running'", id=jobs[1].claim.id) == 1


def test_a_malformed_answer_fails_its_own_job_and_the_rest_of_the_batch_is_stored(
    runtime: WorkerRuntime, producer: Producer, engine: Engine
) -> None:
    jobs = started(runtime.runner, [producer.submit() for _ in range(3)])
    # A field of the wrong type deep inside a 2xx body.
    odd = b'{"choices": [{"message": {"content": null, "tool_calls": 5}}]}'
    malformed = UpstreamReply(200, {"content-type": "application/json"}, odd, 0.5)

    outcomes = runtime.runner.finish_many(
        [(jobs[0], answer(jobs[0])), (jobs[1], malformed), (jobs[2], answer(jobs[2]))]
    )

    assert outcomes == ["succeeded", "failed", "succeeded"]
    (error,) = select(engine, "SELECT error FROM job WHERE id = :id", id=jobs[1].claim.id)
    assert error.error["type"] == "malformed_response"


def test_two_attempts_of_one_job_in_one_batch_store_only_the_current_one(
    runtime: WorkerRuntime, producer: Producer, engine: Engine
) -> None:
    # Attempt 1's record waited out a Postgres outage while the job was taken back and claimed
    # again by this same process: both answers reach one batch.
    message = producer.submit(tools=True)
    (first,) = started(runtime.runner, [message])
    with unit_of_work(runtime.runner.sessions) as session:
        repository.release_jobs(session, [first.claim.id], runtime.runner.worker_id)
    (second,) = started(runtime.runner, [message])
    assert second.claim.attempt == first.claim.attempt + 1
    stale = answer(first)  # asks for a tool call
    current = answer(second, content="the current answer")
    body = orjson.loads(current.content)
    body["choices"][0]["message"].pop("tool_calls", None)
    body["choices"][0]["finish_reason"] = "stop"
    current = UpstreamReply(200, current.headers, orjson.dumps(body), 0.5)

    outcomes = runtime.runner.finish_many([(first, stale), (second, current)])

    assert outcomes == ["superseded", "succeeded"]
    (row,) = select(engine, "SELECT output_text FROM job WHERE id = :id", id=message.job_id)
    assert row.output_text == "the current answer"
    assert count_rows(engine, "tool_call", "job_id = :id", id=message.job_id) == 0


def test_lease_renewal_skips_a_job_another_transaction_holds_instead_of_waiting(
    runtime: WorkerRuntime,
    producer: Producer,
    engine: Engine,
) -> None:
    """A batched record locks its job rows in no set order; were the heartbeat to wait on one
    of them while holding another, the two could deadlock. It skips the held row instead."""
    held, free = started(runtime.runner, [producer.submit(), producer.submit()])
    ids = [held.claim.id, free.claim.id]
    leases = "SELECT id, lease_expires_at FROM job WHERE id = ANY(:ids)"
    before = dict(select(engine, leases, ids=ids))

    with engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM job WHERE id = :id FOR UPDATE"), {"id": held.claim.id})
        with unit_of_work(runtime.runner.sessions) as session:
            # Were the renewal to wait for the held row, this would fail the test, not hang it.
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            repository.renew_leases(session, ids, runtime.runner.worker_id, 600)
        holder.rollback()

    after = dict(select(engine, leases, ids=ids))
    assert after[held.claim.id] == before[held.claim.id]
    assert after[free.claim.id] > before[free.claim.id]
