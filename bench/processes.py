"""Start each process a case needs and return once it serves: the simulator, a gmiq worker, the
gmiq API, the naive worker and the minimal polling API. Processes a case needs together are
spawned together and then awaited, since each spends seconds importing."""

from __future__ import annotations

import sys

from bench.naive import ready_key
from bench.stack import GMIQ, LOOPBACK, Child, Stack, free_port
from worker.waiting import wait_for


def start_simulator(
    stack: Stack, latency_ms: float, api_key: str, chunk_delay_ms: float = 0.0
) -> tuple[Child, str]:
    """`gmiq simulator` in its own process, pausing `chunk_delay_ms` between the frames of a
    streamed answer; returns it and its /v1/ base URL."""
    port = free_port()
    env = stack.env(GMIQ_SIMULATOR_API_KEY=api_key)
    args = [*GMIQ, "simulator", "--host", LOOPBACK, "--port", str(port)]
    args += ["--latency-ms", f"{latency_ms:g}"]
    name = f"simulator-{latency_ms:g}ms"
    if chunk_delay_ms:
        args += ["--chunk-delay-ms", f"{chunk_delay_ms:g}"]
        name += f"-chunks-{chunk_delay_ms:g}ms"
    child = stack.spawn(name, args, env)
    base_url = f"http://{LOOPBACK}:{port}/v1/"
    stack.wait_http(child, base_url + "models")
    return child, base_url


def _spawn_worker(stack: Stack, env: dict[str, str], concurrency: int) -> Child:
    return stack.spawn("worker", [*GMIQ, "worker", "--concurrency", str(concurrency)], env)


def _await_worker(stack: Stack, *children: Child) -> None:
    """Wait until every worker announces itself in Redis."""
    client = stack.redis()

    def announced() -> bool:
        for child in children:
            child.check_alive()
        keys = sum(1 for _ in client.scan_iter(f"{stack.redis_prefix}:worker:*"))
        return keys >= len(children)

    try:
        wait_for(announced, 90, f"{len(children)} gmiq worker(s) to announce themselves")
    finally:
        client.close()


def _spawn_api(stack: Stack, env: dict[str, str]) -> tuple[Child, str]:
    port = free_port()
    child = stack.spawn("api", [*GMIQ, "api", "--host", LOOPBACK, "--port", str(port)], env)
    return child, f"http://{LOOPBACK}:{port}"


def _spawn_minimal_api(stack: Stack, env: dict[str, str]) -> tuple[Child, str]:
    port = free_port()
    args = [sys.executable, "-m", "bench.minimal_api", "--port", str(port)]
    return stack.spawn("minimal-api", args, env), f"http://{LOOPBACK}:{port}"


def start_worker(stack: Stack, env: dict[str, str], concurrency: int) -> Child:
    """`gmiq worker`; ready once it announces itself in Redis."""
    child = _spawn_worker(stack, env, concurrency)
    _await_worker(stack, child)
    return child


def start_workers(stack: Stack, env: dict[str, str], concurrency: int, count: int) -> list[Child]:
    """`count` gmiq worker processes of `concurrency` threads each, all announced."""
    children = [_spawn_worker(stack, env, concurrency) for _ in range(count)]
    _await_worker(stack, *children)
    return children


def start_api(stack: Stack, env: dict[str, str]) -> tuple[Child, str]:
    """`gmiq api` alone, once it answers; returns it and its root URL."""
    api, url = _spawn_api(stack, env)
    stack.wait_http(api, url + "/healthz", 90)
    return api, url


def start_worker_and_api(
    stack: Stack, env: dict[str, str], concurrency: int
) -> tuple[Child, Child, str]:
    """`gmiq worker` and `gmiq api` side by side; returns both and the API's root URL."""
    worker = _spawn_worker(stack, env, concurrency)
    api, url = _spawn_api(stack, env)
    _await_worker(stack, worker)
    stack.wait_http(api, url + "/healthz", 90)
    return worker, api, url


def start_polled_apis(stack: Stack, env: dict[str, str]) -> dict[str, tuple[Child, str]]:
    """gmiq's API and the minimal one, each with its root URL."""
    gmiq = _spawn_api(stack, env)
    minimal = _spawn_minimal_api(stack, env)
    stack.wait_http(gmiq[0], gmiq[1] + "/healthz", 90)
    stack.wait_http(minimal[0], minimal[1] + "/v1/jobs/x", 90)
    return {"gmiq": gmiq, "minimal": minimal}


def start_naive_worker(
    stack: Stack, env: dict[str, str], concurrency: int, client_mode: str, package: str
) -> Child:
    """The naive Celery worker posting with `package`; ready once it sets its key."""
    args = [sys.executable, "-m", "bench.naive", "--concurrency", str(concurrency)]
    args += ["--client", client_mode, "--http", package]
    child = stack.spawn(f"naive-worker-{package}", args, env)
    key = ready_key(stack.redis_prefix)
    client = stack.redis()

    def ready() -> bool:
        child.check_alive()
        return bool(client.get(key))

    try:
        wait_for(ready, 90, "the naive worker to start consuming")
        client.delete(key)
    finally:
        client.close()
    return child
