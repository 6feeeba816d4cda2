"""`gmiq standalone`: embedded Postgres and Redis (unless configured), migrations, the API, a
worker and, without a GMI key, the simulator, as child processes stopped together."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import httpx2

from worker.embedded import start_postgres, start_redis
from worker.migrate import upgrade_database
from worker.settings import Settings, child_environment


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll until the URL answers 2xx, the process dies, or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx2.get(url, timeout=1).is_success:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g}s")


def _stop_children(children: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def curl_example(api_url: str) -> str:
    """A shell command that submits a chat job."""
    body = '{"kind":"chat","request":{"messages":[{"role":"user","content":"Say hello."}]}}'
    return f"curl -s -X POST {api_url}/v1/jobs -H 'content-type: application/json' -d '{body}'"


def run_standalone(settings: Settings) -> int:
    """Run until Ctrl-C or SIGTERM, then stop every child and embedded server."""
    var = Path(settings.var_dir)
    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    with ExitStack() as stack:
        try:
            env = _prepare_services(settings, var, stack)
            gmiq = [sys.executable, "-m", "worker.cli"]
            if not settings.gmi_api_key:
                children.append(subprocess.Popen([*gmiq, "simulator"], env=env))
                sim_url = f"http://127.0.0.1:{settings.simulator_port}/v1/"
                _wait_http(sim_url + "models", children[-1], 30)
            children.append(subprocess.Popen([*gmiq, "worker"], env=env))
            children.append(subprocess.Popen([*gmiq, "api"], env=env))
            api_url = f"http://{settings.api_host}:{settings.api_port}"
            _wait_http(api_url + "/healthz", children[-1], 60)
            upstream = "the GMI simulator" if not settings.gmi_api_key else settings.gmi_base_url
            print(f"\ngmiq is running: API {api_url} (docs at {api_url}/docs), upstream {upstream}")
            print(f"Submit a job:\n  {curl_example(api_url)}")
            print(f"Then poll it:\n  curl -s {api_url}/v1/jobs/<id>\nCtrl-C stops everything.\n")
            sys.stdout.flush()
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            print("gmiq: a process exited; stopping", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, _Stop):
            return 0
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _stop_children(children, grace_s=15)


def _prepare_services(settings: Settings, var: Path, stack: ExitStack) -> dict[str, str]:
    """Start what is not configured, migrate, and return the children's environment."""
    overrides: dict[str, str] = {}
    database_url = settings.database_url
    if not database_url:
        postgres = start_postgres(var / "pg")
        stack.callback(postgres.stop)
        database_url = postgres.url
        overrides["GMIQ_DATABASE_URL"] = database_url
    redis_url = settings.redis_url
    if not redis_url:
        redis_server = start_redis(var / "redis")
        stack.callback(redis_server.stop)
        overrides["GMIQ_REDIS_URL"] = redis_server.url
    upgrade_database(database_url)
    if not settings.gmi_api_key:
        key = secrets.token_urlsafe(24)
        overrides["GMIQ_SIMULATOR_API_KEY"] = key
        overrides["GMIQ_GMI_API_KEY"] = key
        overrides["GMIQ_GMI_BASE_URL"] = f"http://127.0.0.1:{settings.simulator_port}/v1/"
    return child_environment(overrides)
