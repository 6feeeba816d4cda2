"""`gmiq standalone`: embedded Postgres and Redis (unless configured), migrations, the API, a
worker and, without a GMI key, the simulator, as child processes stopped together, in order."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx2

from worker.children import spawn, stop_all
from worker.migrate import upgrade_database
from worker.settings import Settings, child_environment

GMIQ = [sys.executable, "-m", "worker.cli"]


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _wait_http(
    url: str, process: subprocess.Popen[bytes], timeout_s: float, any_status: bool = False
) -> None:
    """Poll until the URL answers 2xx (any status if asked), the process dies, or the deadline
    passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            answer = httpx2.get(url, timeout=1)
            if any_status or answer.is_success:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g}s")


def curl_example(api_url: str) -> str:
    """A shell command that submits a chat job."""
    body = '{"kind":"chat","request":{"messages":[{"role":"user","content":"Say hello."}]}}'
    return f"curl -s -X POST {api_url}/v1/jobs -H 'content-type: application/json' -d '{body}'"


def run_standalone(settings: Settings) -> int:
    """Run until Ctrl-C or SIGTERM, then stop the API, the worker, the simulator and last the
    embedded servers, so nothing is cut off mid-write and no process is left behind."""
    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        env = _prepare_services(settings, children)
        if not settings.gmi_api_key:
            children.insert(0, spawn([*GMIQ, "simulator"], env))
            sim_url = f"http://127.0.0.1:{settings.simulator_port}/v1/models"
            _wait_http(sim_url, children[0], 30, any_status=True)
        children.insert(0, spawn([*GMIQ, "worker"], env))
        children.insert(0, spawn([*GMIQ, "api"], env))
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        _wait_http(api_url + "/healthz", children[0], 60)
        upstream = settings.gmi_base_url if settings.gmi_api_key else "the GMI simulator"
        print(f"\ngmiq is running: API {api_url} (docs at {api_url}/docs), upstream {upstream}")
        print(f"Submit a job:\n  {curl_example(api_url)}")
        print(f"Then poll it:\n  curl -s {api_url}/v1/jobs/<id>\nCtrl-C stops everything.\n")
        sys.stdout.flush()
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("gmiq: a process exited; stopping the others", file=sys.stderr)
        return 1
    except _Stop:
        return 0
    except RuntimeError as exc:
        print(f"gmiq: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children, grace_s=20)


def _prepare_services(
    settings: Settings, children: list[subprocess.Popen[bytes]]
) -> dict[str, str]:
    """Start what is not configured, migrate, and return the children's environment."""
    overrides: dict[str, str] = {}
    configured = {"pg": settings.database_url, "redis": settings.redis_url}
    wanted = [name for name, url in configured.items() if not url]
    database_url = settings.database_url
    if wanted:
        var = Path(settings.var_dir).resolve()
        host = spawn(
            [sys.executable, "-m", "worker.embedded", str(var), *wanted],
            child_environment({}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        children.append(host)
        assert host.stdout is not None
        line = host.stdout.readline()
        if not line:
            raise RuntimeError(f"embedded servers did not start; see {var}")
        urls: dict[str, str] = json.loads(line)
        if "database_url" in urls:
            database_url = overrides["GMIQ_DATABASE_URL"] = urls["database_url"]
        if "redis_url" in urls:
            overrides["GMIQ_REDIS_URL"] = urls["redis_url"]
    upgrade_database(database_url)
    if not settings.gmi_api_key:
        key = secrets.token_urlsafe(24)
        overrides["GMIQ_SIMULATOR_API_KEY"] = key
        overrides["GMIQ_GMI_API_KEY"] = key
        overrides["GMIQ_GMI_BASE_URL"] = f"http://127.0.0.1:{settings.simulator_port}/v1/"
    return child_environment(overrides)
