"""Engine and unit of work: the one place sessions are opened and committed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import to_sqlalchemy_url

# Postgres down, a connection cut, or the pool exhausted while Postgres hangs: worth waiting out.
DATABASE_UNREACHABLE = (OperationalError, DisconnectionError, PoolTimeoutError)

# A connection idle at least this long is pinged before use (see `_ping_after_idle`).
PING_AFTER_IDLE_S = 1.0


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_engine(
    database_url: str,
    pool_size: int = 10,
    max_overflow: int = 10,
    ping_after_idle_s: float = PING_AFTER_IDLE_S,
) -> Engine:
    """A pooled psycopg 3 engine that heals after Postgres restarts (see `_ping_after_idle`)."""
    engine = create_engine(
        to_sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # Last in, first out: a quiet process reuses a few warm connections and the rest idle
        # (and get pinged), instead of every connection idling a little.
        pool_use_lifo=True,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )
    _ping_after_idle(engine, ping_after_idle_s)
    return engine


def _ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Check a connection before use only if it sat in the pool for `idle_s` or more.

    `pool_pre_ping` would cost a round trip on every checkout, i.e. every transaction. A
    connection back in use within a second was fine a moment ago; one that idled through a
    Postgres restart is pinged, and if that fails the whole pool is recycled (every connection
    older than now is replaced at its next checkout), so no caller sees it. A restart in the
    instant a connection is busy fails that one transaction, which SQLAlchemy also turns into a
    pool recycle; callers retry it (`run_job` retries OperationalError, the API answers 503
    "retry later", the background loops try again on their next tick)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["gmiq_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("gmiq_idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise InvalidatePoolError("connection lost while idle in the pool") from exc


def open_connections(sessions: sessionmaker[Session], count: int) -> None:
    """Connect `count` pooled connections now (they stay in the pool), so the first
    transactions after a start do not each pay for a connect and its authentication."""
    opened: list[Session] = []
    try:
        for _ in range(count):
            opened.append(sessions())
            opened[-1].connection()
    finally:
        for session in opened:
            session.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit, since views are built after it."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(
    sessions: sessionmaker[Session], single_statement: bool = False
) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises.

    `single_statement`: the block runs one statement, which Postgres makes atomic by itself,
    so it runs in autocommit: no BEGIN and COMMIT round trips (the claim and the record of
    every job take this path). The connection leaves autocommit when it returns to the pool.
    """
    if not single_statement:
        with sessions() as session, session.begin():
            yield session
        return
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
