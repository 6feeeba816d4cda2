"""A worker process keeps its calls in flight on one event loop: far more calls than Celery
threads, and never more than its concurrency."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from api_contracts.jobs import JobSubmitRequest
from api_contracts.messages import RUN_JOB_TASK
from tests.conftest import ApiServer, WorkerProcess, count_rows, wait_for
from tests.integration.test_pipeline import poll_terminal
from tests.integration.test_reliability import submit
from tests.outages import stoppable_postgres
from worker.celery_app import broker_key_prefix, create_celery_app, restore_sweep_s
from worker.db import make_engine
from worker.producer import JobProducer
from worker.settings import Settings
from worker.simulator import SimulatorServer


def _arrivals(sim: SimulatorServer) -> list[float]:
    return sorted(r["received_at"] for r in sim.requests())


def _submit_slow_jobs(api: ApiServer, sim: SimulatorServer, jobs: int, delay_ms: int) -> list[str]:
    sim.script([{"status": 200, "delay_ms": delay_ms}] * jobs)
    return [submit(api, f"job {n}") for n in range(jobs)]


def test_one_worker_keeps_many_more_calls_in_flight_than_it_has_threads(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    # Two Celery threads: one call per thread would need 20 rounds of 3 s for 40 calls.
    settings = deployment(claim_threads=2)
    start_worker(settings, concurrency=40, queues="jobs")
    api = start_api(settings)
    job_ids = _submit_slow_jobs(api, sim, 40, delay_ms=3000)

    wait_for(lambda: len(sim.requests()) == 40, 20, "all 40 calls to reach the upstream")
    arrivals = _arrivals(sim)
    # Every call reached the upstream before the first one was answered.
    assert arrivals[-1] - arrivals[0] < 3.0
    for job_id in job_ids:
        view = poll_terminal(api, job_id, timeout_s=30)
        assert view["status"] == "succeeded"
        assert view["usage"] is not None


def test_a_full_worker_takes_no_more_jobs_than_its_concurrency(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment(claim_threads=4)
    start_worker(settings, concurrency=3, queues="jobs")
    api = start_api(settings)
    job_ids = _submit_slow_jobs(api, sim, 6, delay_ms=1500)

    wait_for(lambda: len(sim.requests()) == 3, 20, "the first three calls")
    statuses = [api.client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in job_ids]
    assert sorted(statuses) == ["queued"] * 3 + ["running"] * 3
    for job_id in job_ids:
        assert poll_terminal(api, job_id, timeout_s=30)["status"] == "succeeded"
    arrivals = _arrivals(sim)
    # The last three were called only as the first three were answered.
    assert arrivals[3] - arrivals[0] >= 1.4


def _pool_runs(settings: Settings) -> int:
    """How many job tasks the deployment's workers ran on Celery's pool (`celery inspect
    stats`: the tasks each worker's pool took, by name)."""
    app = create_celery_app(settings)
    try:
        replies = app.control.inspect(timeout=2.0).stats() or {}
    finally:
        app.close()
    assert replies, "no worker answered `inspect stats`"
    return sum(int(stats.get("total", {}).get(RUN_JOB_TASK, 0)) for stats in replies.values())


def test_jobs_go_from_celerys_consumer_to_the_call_loop_without_its_pool(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    # Room for two calls: the first two jobs are taken at once; the third arrives while both
    # are in flight, waits in the call loop, and is taken there when a slot frees.
    settings = deployment(claim_threads=1)
    start_worker(settings, concurrency=2, queues="jobs")
    api = start_api(settings)
    job_ids = _submit_slow_jobs(api, sim, 3, delay_ms=1500)

    for job_id in job_ids:
        assert poll_terminal(api, job_id, timeout_s=30)["status"] == "succeeded"
    arrivals = _arrivals(sim)
    assert arrivals[2] - arrivals[0] >= 1.4  # the third was called once a slot freed
    assert _pool_runs(settings) == 0


def test_a_full_worker_turning_calls_over_fast_never_has_more_in_flight_than_its_concurrency(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    make_producer: Callable[[Settings], JobProducer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    # Short calls free slots hundreds of times a second, so the worker claims jobs ahead of
    # its free slots (`worker.claim_ahead`): the calls themselves must still never exceed its
    # concurrency.
    settings = deployment()
    producer = make_producer(settings)
    jobs = 300
    sim.script([{"status": 200, "delay_ms": 30}] * jobs)
    request = {"messages": [{"role": "user", "content": "hi"}]}
    # Queued before the worker starts: it is full from its first call to its last wave.
    ids = [
        str(producer.submit(JobSubmitRequest(kind="chat", request=request))[0].id)
        for _ in range(jobs)
    ]
    start_worker(settings, concurrency=8, queues="jobs")

    ours = "id = ANY(CAST(:ids AS uuid[]))"
    wait_for(
        lambda: count_rows(engine, "job", f"{ours} AND status = 'succeeded'", ids=ids) == jobs,
        60,
        "every job to succeed",
    )
    assert len(sim.requests()) == jobs
    assert sim.stats()["in_flight_peak"] == 8


def test_an_answer_waiting_to_be_recorded_does_not_hold_the_upstream_idle(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment(claim_threads=2)
    start_worker(settings, concurrency=1, queues="jobs")
    api = start_api(settings)
    sim.script([{"status": 200, "delay_ms": 1000}] * 2 + [{"status": 200, "delay_ms": 100}])

    def lock(job_id: str) -> None:
        blocker.execute(
            text("SELECT 1 FROM job WHERE id = CAST(:id AS uuid) FOR UPDATE"), {"id": job_id}
        )

    with engine.connect() as blocker:
        # Each lock is taken after the job's claim, before its answer: its record waits on it.
        first = submit(api, "first")
        wait_for(lambda: sim.requests(), 20, "the first call")
        lock(first)
        second, third = submit(api, "second"), submit(api, "third")
        # One slot: the second call starts once the first call's slot is free, which must not
        # wait for the first answer to be stored.
        wait_for(lambda: len(sim.requests()) == 2, 20, "the second call, first not recorded")
        assert api.client.get(f"/v1/jobs/{first}").json()["status"] == "running"
        lock(second)
        # Answers waiting to be recorded are bounded by as many again as the slots: with two
        # waiting, the third call waits too (it would start 1 s after the second otherwise).
        arrived = time.monotonic()
        while time.monotonic() - arrived < 3.0:
            assert len(sim.requests()) == 2
            time.sleep(0.1)
        assert api.client.get(f"/v1/jobs/{second}").json()["status"] == "running"
        blocker.rollback()
    for job_id in (first, second, third):
        assert poll_terminal(api, job_id, timeout_s=30)["status"] == "succeeded"
    assert len(sim.requests()) == 3


@pytest.mark.timeout(180)
def test_an_answer_that_comes_while_postgres_is_down_is_recorded_without_a_second_call(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    tmp_path: Path,
) -> None:
    with stoppable_postgres(tmp_path) as postgres:
        settings = deployment(database_url=postgres.url, lease_s=30.0)
        worker = start_worker(settings)
        api = start_api(settings)
        sim.script([{"status": 200, "delay_ms": 1000}])
        job_id = submit(api)
        wait_for(lambda: sim.requests(), 20, "the call to start")
        postgres.stop()
        wait_for(
            lambda: "answer not recorded yet" in worker.log_path.read_text(),
            20,
            "the worker to find Postgres down when the answer came",
        )
        postgres.start()
        view = poll_terminal(api, job_id, timeout_s=60)
    assert view["status"] == "succeeded"
    assert [a["outcome"] for a in view["attempts"]] == ["succeeded"]
    assert view["usage"] is not None
    assert len(sim.requests()) == 1


@pytest.mark.timeout(180)
def test_a_job_taken_while_postgres_is_down_is_claimed_once_it_is_back(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    tmp_path: Path,
) -> None:
    with stoppable_postgres(tmp_path) as postgres:
        settings = deployment(database_url=postgres.url, lease_s=30.0, claim_threads=2)
        worker = start_worker(settings, concurrency=1, queues="jobs")
        api = start_api(settings)
        sim.script([{"status": 200, "delay_ms": 1500}, {"status": 200}])
        # The second waits in a taker for the only slot, which frees once the first answer is
        # in (its record then waits for Postgres); by then Postgres is down.
        first, second = submit(api, "first"), submit(api, "second")
        wait_for(lambda: sim.requests(), 20, "the first call")
        postgres.stop()
        wait_for(
            lambda: f"job {second}: not claimed yet" in worker.log_path.read_text(),
            20,
            "the second claim to find Postgres down",
        )
        postgres.start()
        views = [poll_terminal(api, job_id, timeout_s=60) for job_id in (first, second)]
    assert [v["status"] for v in views] == ["succeeded", "succeeded"]
    assert len(sim.requests()) == 2


@pytest.mark.timeout(180)
def test_a_redis_only_job_not_yet_claimed_when_its_worker_stops_is_not_lost(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    make_producer: Callable[[Settings], JobProducer],
    sim: SimulatorServer,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    with stoppable_postgres(tmp_path) as postgres:
        settings = deployment(database_url=postgres.url, shutdown_grace_s=2)
        engine = make_engine(postgres.url)
        worker = start_worker(settings, queues="jobs")
        producer = make_producer(settings)
        postgres.stop()
        # A producer with only Redis: the message is the job until a worker's claim writes it.
        job_id = producer.enqueue_only(
            JobSubmitRequest(kind="chat", request={"messages": [{"role": "user", "content": "hi"}]})
        )
        wait_for(
            lambda: f"job {job_id}: not claimed yet" in worker.log_path.read_text(),
            20,
            "the worker to take the message and find Postgres down",
        )
        # Stopped while the claim waits for Postgres: the message was handed over (and
        # acknowledged to Celery), but is still restorable, not gone.
        worker.process.terminate()
        worker.process.wait(timeout=30)
        prefix = broker_key_prefix(settings)
        assert (
            redis_client.llen(f"{prefix}gmiq.normal") + redis_client.hlen(f"{prefix}unacked") == 1
        )

        postgres.start()
        start_worker(settings, queues="jobs")
        # Restored after the visibility timeout by the next worker's sweep.
        wait_for(
            lambda: count_rows(engine, "job", "id = :j AND status = 'succeeded'", j=job_id),
            settings.visibility_timeout_s + restore_sweep_s(settings.visibility_timeout_s) + 15,
            "the job to run on the next worker",
        )
        engine.dispose()
    assert len(sim.requests()) == 1


def test_sigterm_while_the_loop_is_full_gives_waiting_messages_back(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    redis_client: redis.Redis,
) -> None:
    # One slot: the four messages that come while it is busy wait in the call loop, taken from
    # Redis (within the prefetch of 4 per Celery thread) and not acknowledged.
    settings = deployment(shutdown_grace_s=20, claim_threads=2, prefetch_multiplier=4)
    worker = start_worker(settings, concurrency=1, queues="jobs")
    api = start_api(settings)
    sim.script([{"status": 200, "delay_ms": 2000}])
    first = submit(api, "first")
    wait_for(lambda: sim.requests(), 20, "the first call")
    waiting = [submit(api, f"waiting {n}") for n in range(4)]
    queue = f"{broker_key_prefix(settings)}gmiq.normal"
    wait_for(lambda: redis_client.llen(queue) == 0, 20, "the waiting messages to be taken")

    worker.process.terminate()
    assert worker.process.wait(timeout=20) == 0
    assert api.client.get(f"/v1/jobs/{first}").json()["status"] == "succeeded"
    # Not claimed, not called: back on their queue for the next worker.
    for job_id in waiting:
        assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert len(sim.requests()) == 1
    assert redis_client.llen(queue) == len(waiting)

    start_worker(settings, queues="jobs")
    for job_id in waiting:
        assert poll_terminal(api, job_id)["status"] == "succeeded"
    assert len(sim.requests()) == 1 + len(waiting)


def test_claims_that_wait_together_are_made_in_one_statement(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
    redis_client: redis.Redis,
) -> None:
    # 16 takers holding one message each at most: were a taker to wait for its claim, 16
    # messages would be taken while the claims are held up below, and 24 left on the queue.
    settings = deployment(prefetch_multiplier=1)
    start_worker(settings, concurrency=40, queues="jobs")
    api = start_api(settings)
    prefix = broker_key_prefix(settings)
    with engine.connect() as blocker:
        # A claim opens an attempt row: while this lock is held, the two claim lanes wait on
        # it with a batch each, and the other claims queue behind them.
        blocker.execute(text("LOCK TABLE attempt IN SHARE MODE"))
        job_ids = _submit_slow_jobs(api, sim, 40, delay_ms=100)
        # With a prefetch of 16, the last messages leave the queue only once the takers have
        # handed 24 over without their claims.
        wait_for(
            lambda: redis_client.llen(f"{prefix}gmiq.normal") == 0,
            20,
            "every message to be taken, none claimed",
        )
        assert not sim.requests()
        # Handed over, but not claimed: every message is still restorable.
        assert redis_client.hlen(f"{prefix}unacked") == 40
        blocker.rollback()
    for job_id in job_ids:
        assert poll_terminal(api, job_id, timeout_s=30)["status"] == "succeeded"
    # Claimed: their acknowledgements are written.
    wait_for(lambda: redis_client.hlen(f"{prefix}unacked") == 0, 10, "the acknowledgements")

    # Postgres' now() is the time its statement's transaction began: attempts opened by one
    # claim statement share `started_at`. The 40 claims took three statements when every
    # message was handed over before the lock went (the two that waited on it, then the rest
    # queued behind them as one); the last few taken may add one each. One per claim: 40.
    with engine.connect() as connection:
        statements = connection.execute(
            text(
                "SELECT count(DISTINCT started_at) FROM attempt"
                " WHERE job_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": job_ids},
        ).scalar_one()
    assert statements <= 6
