"""A process connects and prepares its services before it serves, and one-statement units of
work run in autocommit without leaking autocommit into the next transaction on the connection."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import Engine, text

from tests import services as service_fixtures
from tests.conftest import REPO, count_rows, settings_env
from worker import repository
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.db import make_engine, make_sessionmaker, open_connections, unit_of_work
from worker.queues import JOB_QUEUES, reuse_broker_clients, warm_publisher
from worker.runtime import build_runtime
from worker.service import build_api
from worker.settings import Settings

TABLES = ("job", "attempt", "usage", "tool_call", "webhook_event")


def test_a_single_statement_unit_commits_by_itself_and_hands_back_a_transactional_connection(
    services: service_fixtures.TestServices, engine: Engine
) -> None:
    one = make_engine(services.database_url, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(one)
    key = f"autocommit-{uuid.uuid4()}"
    insert = text(
        "INSERT INTO job (id, kind, status, model, priority, request, metadata, idempotency_key)"
        " VALUES (:id, 'chat', 'queued', 'm', 'normal', '{}', '{}', :key)"
    )
    try:
        with unit_of_work(sessions, single_statement=True) as session:
            session.execute(insert, {"id": uuid.uuid4(), "key": key})
            # Committed already, before the block ends: seen from another connection.
            assert count_rows(engine, "job", "idempotency_key = :key", key=key) == 1

        # The same (only) connection, in an ordinary unit of work that fails: nothing stays.
        def fail_after_insert() -> None:
            with unit_of_work(sessions) as session:
                session.execute(insert, {"id": uuid.uuid4(), "key": key + "-rolled-back"})
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            fail_after_insert()
        assert count_rows(engine, "job", "idempotency_key = :key", key=key + "-rolled-back") == 0
    finally:
        one.dispose()


def test_open_connections_leaves_them_connected_in_the_pool(
    services: service_fixtures.TestServices,
) -> None:
    fresh = make_engine(services.database_url, pool_size=6, max_overflow=0)
    try:
        assert fresh.pool.checkedin() == 0
        open_connections(make_sessionmaker(fresh), 4)
        assert fresh.pool.checkedin() == 4
    finally:
        fresh.dispose()


def test_warm_statements_write_nothing_and_leave_the_claim_compiled(
    services: service_fixtures.TestServices, engine: Engine
) -> None:
    fresh = make_engine(services.database_url, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(fresh)
    before = {table: count_rows(engine, table) for table in TABLES}
    try:
        with sessions() as session:
            repository.warm_statements(session, "warm-test")
            session.rollback()
        assert {table: count_rows(engine, table) for table in TABLES} == before
        compiled = len(fresh._compiled_cache)  # type: ignore[attr-defined]
        with unit_of_work(sessions, single_statement=True) as session:
            assert repository.claim_job(session, uuid.uuid4(), "warm-test", 1.0) is None
        assert len(fresh._compiled_cache) == compiled  # type: ignore[attr-defined]
    finally:
        fresh.dispose()


def test_a_worker_runtime_warms_its_pool_and_survives_a_database_that_is_down(
    deployment: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = deployment()
    runtime = build_runtime(settings, create_celery_app(settings), concurrency=4)
    try:
        runtime.warm(3)
        assert runtime.runner.sessions.kw["bind"].pool.checkedin() == 3
    finally:
        runtime.shutdown()
        runtime.runner.sessions.kw["bind"].dispose()

    down = deployment(database_url="postgresql://gmiq@127.0.0.1:1/gmiq")
    runtime = build_runtime(down, create_celery_app(down), concurrency=4)
    try:
        runtime.warm(3)  # logs, does not raise
    finally:
        runtime.shutdown()
    assert "warm-up incomplete: OperationalError" in caplog.text


def test_warm_publisher_declares_every_job_queue(
    deployment: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = deployment()
    app = create_celery_app(settings)
    reuse_broker_clients()
    try:
        warm_publisher(app)
    finally:
        app.close()
    bindings = redis_client.smembers(f"{broker_key_prefix(settings)}_kombu.binding.gmiq.normal")
    declared = {member.decode().rsplit("\x06\x16", 1)[-1] for member in bindings}
    assert declared >= set(JOB_QUEUES)


def test_an_api_built_warm_holds_its_pool_connected(deployment: Callable[..., Settings]) -> None:
    settings = deployment()
    api = build_api(settings, warm=True)
    try:
        assert api.state.engine.pool.checkedin() == settings.db_pool_size
    finally:
        api.state.engine.dispose()


# `gmiq api` up to the moment it would serve: uvicorn.run reports the collector's state instead.
_API_UNTIL_SERVE = """
import gc, json, sys
import uvicorn
from worker import cli

def report(app, **_):
    print(json.dumps([gc.get_threshold()[0], gc.get_freeze_count()]))

uvicorn.run = report
sys.exit(cli.main(["api"]))
"""


def test_the_api_freezes_its_startup_objects_before_it_serves(
    deployment: Callable[..., Settings],
) -> None:
    settings = deployment(gc_gen0_threshold=12_345)
    done = subprocess.run(
        [sys.executable, "-c", _API_UNTIL_SERVE],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    threshold, frozen = json.loads(done.stdout.splitlines()[-1])
    assert threshold == 12_345
    assert frozen > 10_000  # FastAPI, SQLAlchemy, pydantic and Celery's objects, warmed
