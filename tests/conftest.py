"""Fixtures: real services, the simulator, real worker processes, the API on a real socket."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
import uvicorn
from sqlalchemy import Engine, text

from api_contracts.messages import JobMessage
from tests.services import TestServices, delete_prefixed_keys, test_services
from worker.db import make_engine
from worker.producer import JobProducer
from worker.queues import redis_client_url
from worker.service import build_api, build_producer
from worker.settings import Settings
from worker.simulator import SimulatorConfig, SimulatorServer
from worker.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
SIM_KEY = "sim-test-key-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServices]:
    with test_services(tmp_path_factory.mktemp("services")) as found:
        yield found


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(api_key=SIM_KEY)) as server:
        yield server


@pytest.fixture
def sim(simulator: SimulatorServer) -> SimulatorServer:
    """The simulator with an empty script and request log."""
    simulator.reset()
    return simulator


@pytest.fixture(scope="session")
def engine(services: TestServices) -> Iterator[Engine]:
    engine = make_engine(services.database_url, pool_size=4)
    yield engine
    engine.dispose()


def make_settings(services: TestServices, simulator: SimulatorServer, **overrides: Any) -> Settings:
    """Settings for one isolated deployment: its own Redis key prefix, short leases."""
    values: dict[str, Any] = {
        "database_url": services.database_url,
        "redis_url": services.redis_url,
        "redis_prefix": f"gmiqtest-{secrets.token_hex(4)}",
        "gmi_base_url": simulator.base_url,
        "gmi_api_key": SIM_KEY,
        "lease_s": 3.0,
        "visibility_timeout_s": 5,
        "heartbeat_s": 0.5,
        "dispatch_interval_s": 0.2,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.2,
        "read_timeout_s": 30.0,
        "db_pool_size": 5,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a `gmiq` child process needs to reproduce these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GMIQ_", "GMI_"))}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        # pydantic-settings reads complex values (dicts, lists) as JSON.
        env[f"GMIQ_{name.upper()}"] = (
            json.dumps(raw) if isinstance(raw, dict | list | tuple) else str(raw)
        )
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def deployment(
    services: TestServices, simulator: SimulatorServer
) -> Iterator[Callable[..., Settings]]:
    """A factory of isolated deployments (own queues); their Redis keys are removed after."""
    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        settings = make_settings(services, simulator, **overrides)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        delete_prefixed_keys(services.redis_url, settings.redis_prefix)


class WorkerProcess:
    """A real `gmiq worker` process."""

    def __init__(
        self, settings: Settings, concurrency: int, log_path: Path, queues: str = "all"
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = ["worker", "--concurrency", str(concurrency), "--queues", queues]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *command],
            env=settings_env(settings),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 30) -> None:
        client = redis.Redis.from_url(redis_client_url(self.settings.redis_url))

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            return bool(list(client.scan_iter(f"{self.settings.redis_prefix}:worker:*")))

        try:
            wait_for(ready, timeout_s, "the worker to announce itself")
        finally:
            client.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def redis_client(services: TestServices) -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(redis_client_url(services.redis_url))
    yield client
    client.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; each is stopped (or reaped if killed) after the test."""
    started: list[WorkerProcess] = []

    def start(
        settings: Settings, concurrency: int = 16, wait: bool = True, queues: str = "all"
    ) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(settings, concurrency, log_path, queues)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_producer() -> Iterator[Callable[[Settings], JobProducer]]:
    """Python producers on a deployment's services; closed, and their engines disposed, after
    the test."""
    made: list[tuple[JobProducer, Any]] = []

    def make(settings: Settings) -> JobProducer:
        producer, sessions, _ = build_producer(settings)
        made.append((producer, sessions.kw["bind"]))
        return producer

    yield make
    for producer, engine in made:
        producer.close()
        engine.dispose()


class ApiServer:
    """The real API app served by uvicorn in a thread, on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.app = build_api(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the API to start")
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx2.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.engine.dispose()


@pytest.fixture
def start_api() -> Iterator[Callable[[Settings], ApiServer]]:
    started: list[ApiServer] = []

    def start(settings: Settings) -> ApiServer:
        api = ApiServer(settings)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def count_rows(engine: Engine, table: str, where: str = "TRUE", **params: Any) -> int:
    """How many rows of `table` match."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(f"SELECT count(*) FROM {table} WHERE {where}"), params
            ).scalar_one()
        )


def job_message(priority: str = "normal") -> JobMessage:
    """A job message as a producer publishes it (no row behind it)."""
    return JobMessage.model_validate(
        {
            "job_id": uuid.uuid4(),
            "kind": "chat",
            "request": {"messages": [{"role": "user", "content": "hi"}]},
            "model": "m",
            "priority": priority,
            "submitted_at": datetime.now(UTC),
        }
    )
