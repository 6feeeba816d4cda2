"""Servers a test may stop and start again: a dedicated embedded Redis and Postgres, so an
outage test never disturbs the shared servers other tests use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pgserver import postgres_server

from worker.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from worker.migrate import upgrade_database


@dataclass
class StoppableRedis:
    """An embedded Redis with its data on disk, so a restart keeps the queues."""

    data_dir: Path
    server: EmbeddedRedis

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = start_redis(self.data_dir, persist=True)


@contextmanager
def stoppable_redis(tmp: Path) -> Iterator[StoppableRedis]:
    server = StoppableRedis(tmp / "redis", start_redis(tmp / "redis", persist=True))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class StoppablePostgres:
    """An embedded Postgres cluster that can be stopped (fast: clients are cut off)."""

    embedded: EmbeddedPostgres
    url: str

    def stop(self) -> None:
        server = self.embedded.server
        postgres_server.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
        )

    def start(self) -> None:
        self.embedded.server.ensure_postgres_running()


@contextmanager
def stoppable_postgres(tmp: Path) -> Iterator[StoppablePostgres]:
    embedded = start_postgres(tmp / "pg")
    with psycopg.connect(embedded.url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE gmiq")
    url = embedded.url.replace("/postgres?", "/gmiq?")
    upgrade_database(url)
    try:
        yield StoppablePostgres(embedded, url)
    finally:
        embedded.stop()
