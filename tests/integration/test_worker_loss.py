"""A worker killed mid-call, or after taking a message but before starting it, does not lose
its job, and the job is recorded once."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable

import redis
from sqlalchemy import Engine, text

from api_contracts.jobs import JobSubmitRequest
from tests.conftest import REPO, ApiServer, WorkerProcess, count_rows, settings_env, wait_for
from tests.integration.test_pipeline import poll_terminal
from worker.celery_app import restore_sweep_s
from worker.producer import JobProducer
from worker.queues import redis_client_url
from worker.settings import Settings
from worker.simulator import SimulatorServer


def test_sigkilled_worker_job_is_finished_by_another_worker_once(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment(lease_s=2.0)
    first = start_worker(settings)
    api = start_api(settings)
    # The first call hangs long enough for us to kill the worker while it waits on it.
    sim.script([{"status": 200, "delay_ms": 20_000}])
    submitted = api.client.post(
        "/v1/jobs",
        json={"kind": "chat", "request": {"messages": [{"role": "user", "content": "slow"}]}},
    ).json()
    job_id = uuid.UUID(submitted["id"])
    wait_for(lambda: len(sim.requests()) == 1, 20, "the call to reach the upstream")
    assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    first.kill()
    start_worker(settings)

    view = poll_terminal(api, str(job_id), timeout_s=40)
    assert view["status"] == "succeeded"
    assert view["attempt_count"] == 2
    with engine.connect() as connection:
        attempts = connection.execute(
            text("SELECT number, outcome FROM attempt WHERE job_id = :j ORDER BY number"),
            {"j": job_id},
        ).all()
    assert [tuple(a) for a in attempts] == [(1, "lost"), (2, "succeeded")]
    assert count_rows(engine, "usage", "job_id = :j", j=job_id) == 1
    assert len(sim.requests()) == 2


# Takes one job message the way a worker does (it lands in kombu's `unacked` hash) and dies
# without acknowledging it or handing it back, as a worker killed between fetching a message
# and starting its task would.
_TAKE_AND_DIE = """
import os, sys
from worker.celery_app import create_celery_app
from worker.settings import Settings
app = create_celery_app(Settings())
with app.connection_for_read() as connection:
    message = connection.default_channel.basic_get("gmiq.normal", no_ack=False)
    sys.stdout.write("took" if message is not None else "empty")
    sys.stdout.flush()
    os._exit(0)
"""


def test_message_taken_by_a_worker_that_died_is_delivered_again_soon(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    make_producer: Callable[[Settings], JobProducer],
    sim: SimulatorServer,
) -> None:
    # The dispatcher's republishing stays at its default (10 min), so only kombu's restore of
    # unacknowledged messages can bring this job back within the deadline below. The visibility
    # timeout outlasts the worker's start, so its first sweep at start finds nothing to restore
    # and the later sweeps have to.
    settings = deployment(visibility_timeout_s=15)
    assert settings.redispatch_after_s >= 600
    producer = make_producer(settings)
    view, _ = producer.submit(
        JobSubmitRequest(kind="chat", request={"messages": [{"role": "user", "content": "hi"}]})
    )
    taker = subprocess.run(
        [sys.executable, "-c", _TAKE_AND_DIE],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert taker.stdout == b"took", taker.stderr.decode()[-2000:]
    client = redis.Redis.from_url(redis_client_url(settings.redis_url))
    try:
        assert client.llen(f"{settings.redis_prefix}:gmiq.normal") == 0
        assert client.hlen(f"{settings.redis_prefix}:unacked") == 1
    finally:
        client.close()

    start_worker(settings)
    # Visibility timeout plus one restore sweep plus the job itself; kombu's default sweep
    # cadence would take up to 100 s.
    deadline_s = settings.visibility_timeout_s + restore_sweep_s(settings.visibility_timeout_s) + 8
    wait_for(
        lambda: producer.get(view.id).status == "succeeded", deadline_s, "the job to run again"
    )
    assert len(sim.requests()) == 1
