"""A worker killed mid-call does not lose its job, and the job is recorded once."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import Engine, text

from tests.conftest import ApiServer, WorkerProcess, count_rows, wait_for
from tests.integration.test_pipeline import poll_terminal
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
