"""`gmiq standalone` on a fresh directory: embedded Postgres and Redis, the simulator, the API
and a worker; the printed curl works; Ctrl-C stops everything and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx2
import orjson
import psutil
import pytest

from tests.conftest import REPO, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def processes_using(path: Path) -> list[psutil.Process]:
    """Processes whose command line or working directory mentions the path."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if str(path) in cmdline or str(path) in (process.info["cwd"] or ""):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p.pid != os.getpid()]


@pytest.mark.timeout(180)
def test_standalone_runs_a_job_from_the_printed_curl_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GMIQ_", "GMI_"))}
    api_port, sim_port = free_port(), free_port()
    env |= {
        "GMIQ_API_PORT": str(api_port),
        "GMIQ_SIMULATOR_PORT": str(sim_port),
        "GMIQ_VAR_DIR": str(tmp_path / "var"),
        "GMIQ_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "standalone"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(line.decode() for line in process.stdout or []), daemon=True
    )
    reader.start()
    try:
        curl = wait_for(
            lambda: (
                next((ln.strip() for ln in lines if ln.strip().startswith("curl -s -X")), None)
                or (process.poll() is not None and pytest.fail("".join(lines)))
            ),
            120,
            "standalone to print its curl",
            every_s=0.2,
        )
        assert f"http://127.0.0.1:{api_port}" in "".join(lines)
        submitted: dict[str, Any] = orjson.loads(
            subprocess.run(curl, shell=True, check=True, capture_output=True).stdout
        )
        assert submitted["status"] == "queued"

        def finished() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx2.get(
                f"http://127.0.0.1:{api_port}/v1/jobs/{submitted['id']}"
            ).json()
            return view if view["status"] == "succeeded" else None

        view = wait_for(finished, 60, "the job to succeed", every_s=0.2)
        assert view["output_text"]
        assert view["usage"]["total_tokens"] > 0
        assert processes_using(tmp_path)  # the embedded servers and children run under it
    finally:
        # What Ctrl-C does in a terminal: SIGINT to the whole foreground process group.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=5)
        if process.stdout:
            process.stdout.close()
    assert process.returncode == 0, "".join(lines)
    leftovers = wait_for(lambda: not processes_using(tmp_path), 15, "every process to exit")
    assert leftovers
    assert not re.search(r"Traceback", "".join(lines)), "".join(lines)
