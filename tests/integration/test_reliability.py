"""Retries, backoff, worker loss, duplicates and outages: every accepted job ends in exactly one
recorded outcome."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from api_contracts.messages import JobMessage
from tests.conftest import ApiServer, WorkerProcess, count_rows, wait_for
from tests.integration.test_pipeline import poll_terminal
from tests.outages import stoppable_postgres, stoppable_redis
from worker.celery_app import create_celery_app
from worker.queues import publish_job
from worker.settings import Settings
from worker.simulator import SimulatorConfig, SimulatorServer

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def submit(api: ApiServer, content: str = "hello", **extra: Any) -> str:
    body = {"kind": "chat", "request": {"messages": [{"role": "user", "content": content}]}}
    answer = api.client.post("/v1/jobs", json=body | extra)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def attempts_of(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT * FROM attempt WHERE job_id = :j ORDER BY number"),
                {"j": uuid.UUID(job_id)},
            ).all()
        )


def test_job_retries_after_429_and_honours_retry_after(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 429, "retry_after": "2"}, {"status": 429, "retry_after": "2"}])
    job_id = submit(api)

    view = poll_terminal(api, job_id)
    assert view["status"] == "succeeded"
    assert view["attempt_count"] == 3
    assert [a["outcome"] for a in view["attempts"]] == ["retry", "retry", "succeeded"]
    assert [a["status_code"] for a in view["attempts"]] == [429, 429, 200]
    assert all(a["delay_s"] == 2.0 for a in view["attempts"][:2])
    rows = attempts_of(engine, job_id)
    assert len(rows) == 3
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in pairwise(rows)]
    assert all(gap >= 2.0 for gap in gaps), gaps
    received = [r["received_at"] for r in sim.requests()]
    assert all(b - a >= 2.0 for a, b in pairwise(received)), received


def test_job_that_fails_every_attempt_ends_failed_with_each_attempt_recorded(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment(max_attempts=4)
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 500}] * 10)
    job_id = submit(api)

    view = poll_terminal(api, job_id)
    assert view["status"] == "failed"
    assert view["attempt_count"] == 4
    assert [a["outcome"] for a in view["attempts"]] == ["retry", "retry", "retry", "failed"]
    assert view["error"]["status_code"] == 500
    assert view["error"]["message"]
    assert view["attempts"][-1]["error_message"] == view["error"]["message"]
    assert len(sim.requests()) == 4


def test_transport_errors_and_malformed_bodies(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment(read_timeout_s=1.0)
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"kind": "reset"}, {"kind": "hang"}])
    view = poll_terminal(api, submit(api, "first"))
    assert view["status"] == "succeeded"
    assert [a["error_type"] for a in view["attempts"]] == ["connection", "timeout", None]

    sim.script([{"kind": "malformed"}])
    view = poll_terminal(api, submit(api, "second"))
    assert view["status"] == "failed"
    assert view["error"]["type"] == "malformed_response"
    assert view["attempt_count"] == 1


def test_worker_killed_while_job_waits_for_retry_still_finishes_once(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    first = start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 429, "retry_after": "3"}])
    job_id = submit(api)
    wait_for(
        lambda: api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "retrying",
        20,
        "the job to wait for its retry",
    )
    first.kill()
    start_worker(settings)

    view = poll_terminal(api, job_id)
    assert view["status"] == "succeeded"
    assert [a["outcome"] for a in view["attempts"]] == ["retry", "succeeded"]
    assert count_rows(engine, "usage", "job_id = :j", j=uuid.UUID(job_id)) == 1
    assert len(sim.requests()) == 2


def test_same_message_delivered_twice_writes_one_result(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    app = create_celery_app(settings)
    message = JobMessage(job_id=uuid.uuid4(), kind="chat", request=CHAT, model="m/1")
    publish_job(app, message)
    publish_job(app, message)
    start_worker(settings)
    api = start_api(settings)

    view = poll_terminal(api, str(message.job_id))
    assert view["status"] == "succeeded"
    # Give the duplicate time to be taken and dropped, then check nothing was written twice.
    wait_for(
        lambda: sum(api.client.get("/v1/stats").json()["queues"].values()) == 0,
        20,
        "the duplicate to be consumed",
    )
    assert count_rows(engine, "usage", "job_id = :j", j=message.job_id) == 1
    assert count_rows(engine, "attempt", "job_id = :j", j=message.job_id) == 1
    assert len(sim.requests()) == 1


def test_running_job_cancel_stops_it_before_its_retry(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment()
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 503, "delay_ms": 1500}])
    job_id = submit(api)
    wait_for(lambda: sim.requests(), 20, "the call to start")
    answer = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["cancel_requested"] is True

    view = poll_terminal(api, job_id)
    assert view["status"] == "cancelled"
    assert view["attempt_count"] == 1
    assert len(sim.requests()) == 1


def test_running_streamed_job_cancel_stops_it_between_chunks(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    engine: Engine,
) -> None:
    # One SSE frame every 300 ms: the whole answer would take several seconds.
    with SimulatorServer(SimulatorConfig(chunk_delay_ms=300)) as dripping:
        settings = deployment(gmi_base_url=dripping.base_url, gmi_api_key=None)
        start_worker(settings)
        api = start_api(settings)
        request = {"messages": [{"role": "user", "content": "a long story"}], "stream": True}
        job_id = submit(api, request=request)
        wait_for(lambda: dripping.requests(), 20, "the call to start")
        cancelled_at = time.monotonic()
        assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

        view = poll_terminal(api, job_id)
        # The heartbeat (0.5 s here) tells the worker; the next chunk stops the call.
        assert time.monotonic() - cancelled_at < 2.5
        assert view["status"] == "cancelled"
        assert [a["outcome"] for a in view["attempts"]] == ["cancelled"]
        assert view["result"] is None
        assert count_rows(engine, "usage", "job_id = :j", j=uuid.UUID(job_id)) == 0
        assert len(dripping.requests()) == 1


def test_sigterm_lets_running_calls_finish(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment(shutdown_grace_s=20)
    worker = start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 200, "delay_ms": 1500}])
    job_id = submit(api)
    wait_for(lambda: sim.requests(), 20, "the call to start")
    worker.process.terminate()
    assert worker.process.wait(timeout=20) == 0
    view = api.client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded"


def test_sigterm_past_the_grace_hands_running_jobs_back(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    settings = deployment(shutdown_grace_s=1)
    worker = start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 200, "delay_ms": 30_000}])
    job_id = submit(api)
    wait_for(lambda: sim.requests(), 20, "the call to start")
    worker.process.terminate()
    worker.process.wait(timeout=20)
    view = api.client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "queued"
    assert view["attempts"][0]["error_type"] == "worker_shutdown"

    start_worker(settings)
    view = poll_terminal(api, job_id)
    assert view["status"] == "succeeded"
    assert [a["outcome"] for a in view["attempts"]] == ["lost", "succeeded"]


@pytest.mark.timeout(180)
def test_redis_outage_loses_no_accepted_job(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
    tmp_path: Path,
) -> None:
    with stoppable_redis(tmp_path) as redis_server:
        # kombu's Redis transport pops a message, then records it as unacknowledged in a second
        # round trip: a message popped just as Redis stops is gone from Redis. Its job is still
        # queued in Postgres, and the dispatcher publishes it again after this long.
        settings = deployment(redis_url=redis_server.url, redispatch_after_s=10.0)
        start_worker(settings)
        api = start_api(settings)
        sim.script([{"status": 200, "delay_ms": 1500}] * 5)
        before = [submit(api, f"before {n}") for n in range(10)]
        wait_for(lambda: sim.requests(), 20, "calls to start")
        redis_server.stop()
        during = [submit(api, f"during {n}") for n in range(5)]
        redis_server.start()
        after = [submit(api, f"after {n}") for n in range(5)]

        views = [poll_terminal(api, job_id, timeout_s=90) for job_id in before + during + after]
    assert [v["status"] for v in views] == ["succeeded"] * 20
    for view in views:
        assert count_rows(engine, "usage", "job_id = :j", j=uuid.UUID(view["id"])) == 1


@pytest.mark.timeout(180)
def test_postgres_outage_loses_no_accepted_job(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    tmp_path: Path,
) -> None:
    with stoppable_postgres(tmp_path) as postgres:
        settings = deployment(database_url=postgres.url, lease_s=2.0)
        start_worker(settings)
        api = start_api(settings)
        sim.script([{"status": 200, "delay_ms": 2000}] * 5)
        jobs = [submit(api, f"job {n}") for n in range(10)]
        wait_for(lambda: sim.requests(), 20, "calls to start")
        postgres.stop()
        refused = api.client.post("/v1/jobs", json={"kind": "chat", "request": CHAT})
        assert refused.status_code == 503
        postgres.start()
        views = [poll_terminal(api, job_id, timeout_s=90) for job_id in jobs]
        assert [v["status"] for v in views] == ["succeeded"] * 10
        for view in views:
            assert view["usage"] is not None
            assert view["attempts"][-1]["outcome"] == "succeeded"
