"""Run a bench Celery worker (the naive task, Celery's floor) the way `gmiq worker` runs its own:
threads pool, no gossip, mingle or heartbeat; ready once it has set a key in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery


def run_threads_worker(
    app: Celery, concurrency: int, queues: Sequence[str], redis_url: str, ready_key: str
) -> None:
    """Consume `queues` with `concurrency` threads until SIGTERM; `ready_key` is set in Redis
    once the worker consumes."""
    from celery.signals import worker_ready

    def on_ready(**_: Any) -> None:
        redis.Redis.from_url(redis_url).set(ready_key, "1", ex=3600)

    worker_ready.connect(on_ready, weak=False)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queues)}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
    )
