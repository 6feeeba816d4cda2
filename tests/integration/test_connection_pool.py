"""The engine's pool: no ping while connections are busy, and a connection that died while idle
(Postgres restarted, or killed its backend) is replaced before anyone uses it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from tests import services as service_fixtures
from tests.conftest import wait_for
from worker.db import make_engine


@pytest.fixture
def one_connection(services: service_fixtures.TestServices) -> Iterator[Engine]:
    engine = make_engine(services.database_url, pool_size=1, max_overflow=0, ping_after_idle_s=0.3)
    yield engine
    engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()


def backend_alive(engine: Engine, pid: int) -> bool:
    with engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p")
        return bool(connection.execute(query, {"p": pid}).scalar_one())


def test_connection_killed_while_idle_is_replaced_without_an_error(
    one_connection: Engine, engine: Engine
) -> None:
    first = backend_pid(one_connection)
    terminate(engine, first)
    wait_for(lambda: not backend_alive(engine, first), 5, "the terminated backend to exit")
    # Pinged only once idle for ping_after_idle_s (0.3 s): an idle time, not an event.
    time.sleep(0.35)
    assert backend_pid(one_connection) != first


def test_busy_connection_is_not_pinged_and_the_pool_heals_after_one_failure(
    one_connection: Engine, engine: Engine
) -> None:
    first = backend_pid(one_connection)
    terminate(engine, first)
    # Back in use at once: no ping, so the dead connection is handed out and its statement fails.
    with pytest.raises(OperationalError):
        backend_pid(one_connection)
    assert backend_pid(one_connection) != first
