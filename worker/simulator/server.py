"""Run the simulator with uvicorn: in a background thread for tests, or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx2
import uvicorn

from worker.simulator.app import create_app
from worker.simulator.config import SimulatorConfig
from worker.simulator.transport import silence_deliberate_cuts

_POLL_INTERVAL_S = 0.01
# Long enough for in-flight answers to finish; "hang" faults are cancelled after it.
_GRACEFUL_SHUTDOWN_S = 1


def run_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the simulator in the foreground until interrupted (the `gmiq simulator` command)."""
    # uvicorn's "auto" loop and http pick uvloop and httptools only when they are installed.
    uv_config = uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    # uvicorn configures its loggers when the Config is built; the filter must come after.
    silence_deliberate_cuts()
    uvicorn.Server(uv_config).run()


class SimulatorServer:
    """A simulator on 127.0.0.1 and a free port, served from a background thread.

    Use it as a context manager; `base_url` is ready for `openai.OpenAI(base_url=...)`.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self._start_timeout_s = start_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._control: httpx2.Client | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        return self._port

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:PORT`, where the /_sim/ control endpoints live."""
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1/`, the OpenAI-compatible base URL."""
        return f"{self.root_url}/v1/"

    def start(self) -> None:
        """Start serving and return once the server accepts connections."""
        # Binding here (port 0) hands uvicorn a ready socket and tells us the port up front.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            create_app(self.config),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        )
        silence_deliberate_cuts()
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"gmi-simulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_until_serving(self._server, self._thread)
        self._control = httpx2.Client(base_url=self.root_url, timeout=10.0)

    def _wait_until_serving(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError("the simulator thread exited during startup")
            if server.started and self._accepts_connections():
                return
            time.sleep(_POLL_INTERVAL_S)
        self.stop()
        raise TimeoutError(f"the simulator did not start within {self._start_timeout_s} s")

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self._port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop serving and wait for the server thread to finish."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_GRACEFUL_SHUTDOWN_S + 10)
            self._thread = None
        self._server = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, answers: list[dict[str, Any]]) -> None:
        """Queue answers for the next model calls (see `POST /_sim/script`)."""
        self._client().post("/_sim/script", json={"answers": answers}).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Return the /v1 requests received since the last reset, oldest first."""
        response = self._client().get("/_sim/requests")
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["requests"]
        return entries

    def stats(self) -> dict[str, Any]:
        """Return the per-path outcome counts (see `GET /_sim/stats`)."""
        response = self._client().get("/_sim/stats")
        response.raise_for_status()
        counts: dict[str, Any] = response.json()
        return counts

    def reset(self) -> None:
        """Clear the script, the request log and the counts."""
        self._client().post("/_sim/reset").raise_for_status()

    def _client(self) -> httpx2.Client:
        if self._control is None:
            raise RuntimeError("the simulator is not running")
        return self._control
