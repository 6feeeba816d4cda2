"""gmiq's two ways in: jobs posted to the HTTP API, and jobs submitted by the Python producer
(`build_producer(settings)[0].submit`) from a pool of threads in this process."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Engine

from api_contracts.jobs import JobSubmitRequest
from bench.traffic import TrafficResult, run_traffic
from bench.workload import job_submission
from worker.service import build_producer
from worker.settings import Settings


def submit_via_api(
    api_url: str,
    run_tag: str,
    count: int,
    concurrency: int,
    deadline_s: float,
    rate_per_s: float | None = None,
    client: str | None = None,
    stream: bool = False,
) -> TrafficResult:
    """POST /v1/jobs `count` times over `concurrency` connections (or at a fixed rate)."""
    body = orjson.dumps(job_submission(run_tag, stream))
    url = f"{api_url}/v1/jobs"
    return run_traffic(
        lambda _: ("POST", url, body),
        count,
        concurrency,
        {"content-type": "application/json"},
        deadline_s,
        rate_per_s,
        client,
    )


@dataclass
class ProducerResult:
    """When the producer threads started and finished, and what went wrong."""

    started_at: float = 0.0
    ended_at: float = 0.0
    submitted: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def elapsed_s(self) -> float:
        return max(self.ended_at - self.started_at, 1e-9)


def submit_via_producer(
    settings: Settings,
    run_tag: str,
    count: int,
    threads: int,
    deadline_s: float,
    stream: bool = False,
) -> ProducerResult:
    """Submit `count` jobs with the producer from `threads` threads; its connections are closed
    before returning (so their statistics reach Postgres)."""
    producer, sessions, app = build_producer(settings)
    submission = JobSubmitRequest.model_validate(job_submission(run_tag, stream))
    result = ProducerResult()
    lock = threading.Lock()
    remaining = [count]
    deadline = time.monotonic() + deadline_s

    def submit_some() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                producer.submit(submission)
            except Exception as exc:  # every failure is counted, none stops the run
                with lock:
                    result.errors[type(exc).__name__] += 1
                continue
            with lock:
                result.submitted += 1

    try:
        result.started_at = time.time()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="producer") as pool:
            for future in [pool.submit(submit_some) for _ in range(threads)]:
                future.result()
        result.ended_at = time.time()
    finally:
        producer.close()
        bind = sessions.kw.get("bind")
        if isinstance(bind, Engine):
            bind.dispose()
        app.close()
    return result
