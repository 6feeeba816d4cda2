"""What a benchmark run stands on: its own database and Redis key prefix on the local servers,
and the child processes (simulator, workers, APIs), each started, awaited and stopped here.
Everything is torn down by `close()`, which `run` calls on every exit, Ctrl-C included."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import psycopg
import redis
from psycopg import sql
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from worker.children import spawn
from worker.migrate import upgrade_database
from worker.queues import redis_client_url
from worker.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
GMIQ = [sys.executable, "-m", "worker.cli"]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _loopback_only(url: str, what: str) -> None:
    """Refuse any server but this machine's: the benchmark sends load to the loopback only."""
    host = urlsplit(url).hostname
    if host not in (None, "", "127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"bench: {what} must be on the loopback, not {host}")


@dataclass
class Child:
    """A child process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after the grace."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Stack:
    """The run's database, Redis prefix and children."""

    admin_url: str
    redis_url: str
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gmiq-bench-")))
    database_url: str = ""
    children: list[Child] = field(default_factory=list)
    _monitor: Engine | None = None
    _spawned: int = 0

    @property
    def database_name(self) -> str:
        return f"gmiq_bench_{self.tag}"

    @property
    def redis_prefix(self) -> str:
        return f"gmiqbench-{self.tag}"

    def open(self) -> None:
        """Create and migrate the database."""
        _loopback_only(self.admin_url, "Postgres")
        _loopback_only(self.redis_url, "Redis")
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database_name)))
        self.database_url = (
            make_url(self.admin_url)
            .set(database=self.database_name)
            .render_as_string(hide_password=False)
        )
        upgrade_database(self.database_url)

    def monitor(self) -> Engine:
        """One pooled connection to the run's database, for polling and stats."""
        if self._monitor is None:
            self._monitor = create_engine(
                self.database_url.replace("postgresql://", "postgresql+psycopg://", 1),
                pool_size=1,
                max_overflow=0,
            )
        return self._monitor

    def release_monitor(self) -> None:
        """Close the monitor's connection (its backend flushes its stats as it exits)."""
        if self._monitor is not None:
            self._monitor.dispose()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(redis_client_url(self.redis_url), socket_timeout=5)

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a gmiq child: this run's services, quiet logs, and any GMIQ_*
        the caller exported (GMIQ_DB_POOL_SIZE=40 make bench) unless the run sets it."""
        env = dict(os.environ)
        env.update(
            GMIQ_DATABASE_URL=self.database_url,
            GMIQ_REDIS_URL=self.redis_url,
            GMIQ_REDIS_PREFIX=self.redis_prefix,
            GMIQ_LOG_LEVEL=env.get("GMIQ_LOG_LEVEL", "WARNING"),
            PYTHONPATH=str(REPO),
        )
        env.update(overrides)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        """Start a child in its own session (Ctrl-C reaches only us), dying with us."""
        self._spawned += 1
        log_path = self.logs / f"{self._spawned:02d}-{name}.log"
        with log_path.open("wb") as log:
            process = spawn(
                args, env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, *children: Child) -> None:
        """Stop these children, in order."""
        for child in children:
            child.stop()
            if child in self.children:
                self.children.remove(child)

    def wait_http(self, child: Child, url: str, timeout_s: float = 60) -> None:
        """Wait until the URL answers anything, or fail if the child dies."""

        def answers() -> bool:
            child.check_alive()
            try:
                httpx2.get(url, timeout=1)
            except httpx2.TransportError:
                return False
            return True

        wait_for(answers, timeout_s, f"{child.name} at {url}")

    def wait_database_idle(self, timeout_s: float = 30) -> None:
        """Wait until no client but the monitor is connected, so every backend that wrote has
        exited and flushed its statistics."""
        self.release_monitor()

        def idle() -> bool:
            with self.monitor().connect() as connection:
                others = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND backend_type = 'client backend'"
                    )
                ).scalar_one()
            return int(others) == 0

        wait_for(idle, timeout_s, "the benchmark database's connections to close", every_s=0.2)

    def close(self) -> None:
        """Stop every child, drop the database, delete the Redis keys; never raises."""
        for child in reversed(self.children):
            try:
                child.stop(grace_s=10)
            except Exception as exc:  # cleanup goes on whatever one step does
                print(f"bench: stopping {child.name}: {exc}", file=sys.stderr)
        self.children.clear()
        self.release_monitor()
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database_name)
                    )
                )
        except psycopg.Error as exc:
            print(f"bench: dropping {self.database_name}: {exc}", file=sys.stderr)
        try:
            client = self.redis()
            keys = list(client.scan_iter(f"{self.redis_prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            client.close()
        except redis.RedisError as exc:
            print(f"bench: deleting Redis keys {self.redis_prefix}*: {exc}", file=sys.stderr)
