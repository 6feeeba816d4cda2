"""Per-job timeouts and the job deadline, end to end: a worker applies a job's own read timeout,
and a job that runs out of time fails `deadline_exceeded`, whether it was waiting for a retry,
in a call, or never started."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from api_contracts.jobs import JobTimeouts
from api_contracts.messages import JobMessage
from tests.conftest import ApiServer, WorkerProcess, wait_for
from tests.integration.test_pipeline import poll_terminal
from tests.integration.test_reliability import attempts_of, submit
from worker.celery_app import create_celery_app
from worker.queues import publish_job
from worker.settings import Settings
from worker.simulator import SimulatorServer


@pytest.fixture
def api(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
) -> ApiServer:
    """The API of a deployment with one worker running."""
    settings = deployment()
    start_worker(settings)
    return start_api(settings)


def test_a_jobs_own_read_timeout_applies_and_the_timeout_is_retried(
    api: ApiServer, sim: SimulatorServer
) -> None:
    # The deployment's own read timeout is 30 s.
    sim.script([{"status": 200, "delay_ms": 5000}])
    job_id = submit(api, timeouts={"read_s": 0.5})

    view = poll_terminal(api, job_id)
    assert view["status"] == "succeeded"
    assert [a["outcome"] for a in view["attempts"]] == ["retry", "succeeded"]
    first = view["attempts"][0]
    assert first["error_type"] == "timeout"
    assert "ReadTimeout" in first["error_message"]


def test_a_retry_that_would_pass_the_deadline_fails_the_job_at_once(
    api: ApiServer, sim: SimulatorServer
) -> None:
    sim.script([{"status": 429, "retry_after": "30"}])
    started = time.monotonic()
    job_id = submit(api, timeouts={"total_s": 10})

    view = poll_terminal(api, job_id, timeout_s=8)
    assert time.monotonic() - started < 8  # it did not wait the 30 s it was asked to
    assert view["status"] == "failed"
    assert view["error"]["type"] == "deadline_exceeded"
    assert view["error"]["status_code"] == 429
    assert "deadline of 10 s" in view["error"]["message"]
    assert view["timeouts"] == {
        "connect_s": None,
        "read_s": None,
        "call_s": None,
        "total_s": 10.0,
    }
    assert view["deadline_at"] is not None
    assert view["attempt_count"] == 1
    assert view["attempts"][0]["error_type"] == "deadline_exceeded"
    assert len(sim.requests()) == 1


def test_a_call_is_cut_at_the_jobs_deadline(
    api: ApiServer, sim: SimulatorServer, engine: Engine
) -> None:
    sim.script([{"status": 200, "delay_ms": 20_000}])
    job_id = submit(api, timeouts={"total_s": 3})

    view = poll_terminal(api, job_id, timeout_s=15)
    assert view["status"] == "failed"
    assert view["error"]["type"] == "deadline_exceeded"
    assert "call's limit" in view["error"]["message"]
    (attempt,) = attempts_of(engine, job_id)
    call_s = (attempt.finished_at - attempt.started_at).total_seconds()
    assert call_s < 3.5, call_s  # cut at the deadline, not at the 30 s read timeout
    job = _job_row(engine, job_id)
    assert job.finished_at <= job.deadline_at + timedelta(seconds=1)


def test_a_job_whose_deadline_passes_before_any_worker_takes_it_fails_without_a_call(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    engine: Engine,
) -> None:
    settings = deployment()
    api = start_api(settings)
    job_id = submit(api, timeouts={"total_s": 0.5})
    wait_for(lambda: _overdue(engine, job_id), 10, "the job's deadline to pass")

    start_worker(settings)
    view = poll_terminal(api, job_id, timeout_s=20)
    assert view["status"] == "failed"
    assert view["error"]["type"] == "deadline_exceeded"
    assert view["attempt_count"] == 0
    assert sim.requests() == []


def test_a_redis_only_producers_deadline_counts_from_when_it_sent_the_job(
    api: ApiServer, sim: SimulatorServer
) -> None:
    settings = api.settings
    message = JobMessage(
        job_id=uuid.uuid4(),
        kind="chat",
        request={"messages": [{"role": "user", "content": "hi"}]},
        model="m/1",
        submitted_at=datetime.now(UTC) - timedelta(minutes=5),
        timeouts=JobTimeouts(total_s=60),
    )
    publish_job(create_celery_app(settings), message)

    view = poll_terminal(api, str(message.job_id), timeout_s=20)
    assert view["status"] == "failed"
    assert view["error"]["type"] == "deadline_exceeded"
    assert sim.requests() == []


def test_timeouts_are_validated_naming_the_field(
    deployment: Callable[..., Settings],
    start_api: Callable[[Settings], ApiServer],
    engine: Engine,
) -> None:
    api = start_api(deployment())
    body: dict[str, Any] = {
        "kind": "chat",
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "metadata": {"probe": uuid.uuid4().hex},
        "timeouts": {"read_s": -1},
    }
    answer = api.client.post("/v1/jobs", json=body)
    assert answer.status_code == 422
    assert "timeouts.read_s" in answer.text
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT count(*) FROM job WHERE metadata->>'probe' = :p"),
            {"p": body["metadata"]["probe"]},
        ).scalar_one()
    assert stored == 0


def _job_row(engine: Engine, job_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT * FROM job WHERE id = :j"), {"j": uuid.UUID(job_id)}
        ).one()


def _overdue(engine: Engine, job_id: str) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text("SELECT deadline_at < now() FROM job WHERE id = :j"),
                {"j": uuid.UUID(job_id)},
            ).scalar_one()
        )
