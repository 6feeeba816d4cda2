"""Celery's own floor: gmiq's Celery app (same queues, acks, prefetch, transport options, threads
pool and concurrency) running a task that does nothing but wait as long as the upstream call
would. What one worker process costs per job here is what Celery and the Redis transport cost
before gmiq does anything; the `floor` drain sets it against the `scale-1` drain.

Run as a worker: `python -m bench.floor --concurrency 200 --wait-ms 500` with gmiq's GMIQ_*
environment (its own GMIQ_REDIS_PREFIX, so its queues are its own).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from bench.celery_worker import run_threads_worker
from worker.celery_app import create_celery_app
from worker.queues import JOB_QUEUES, QUEUE_BY_PRIORITY, reuse_broker_clients
from worker.settings import Settings

NOOP_TASK = "bench.floor.wait"


def ready_key(redis_prefix: str) -> str:
    """The Redis key the floor worker sets once it consumes."""
    return f"{redis_prefix}:floor-ready"


def create_floor_app(settings: Settings, wait_s: float) -> Celery:
    """gmiq's Celery app, configured as a worker's, with the waiting task registered."""
    app = create_celery_app(settings, consumer=True)

    @app.task(name=NOOP_TASK)
    def wait() -> None:
        time.sleep(wait_s)

    return app


def publish(app: Celery, count: int, threads: int = 8) -> None:
    """`count` task messages on the normal queue, as gmiq's jobs go, from `threads` threads
    (as the `scale-*` drains publish theirs)."""

    def send(_: int) -> None:
        app.send_task(NOOP_TASK, queue=QUEUE_BY_PRIORITY["normal"])

    with ThreadPoolExecutor(threads, thread_name_prefix="publish") as pool:
        list(pool.map(send, range(count)))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the floor worker until SIGTERM, with the arguments `gmiq worker` gives Celery."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--wait-ms", type=float, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    app = create_floor_app(settings, args.wait_ms / 1000)
    reuse_broker_clients()  # as `gmiq worker` does
    run_threads_worker(
        app, args.concurrency, JOB_QUEUES, settings.redis_url, ready_key(settings.redis_prefix)
    )


if __name__ == "__main__":
    main()
