"""The naive baseline: a plain Celery task that posts the call with a sync HTTP client (httpx2,
or httpx 0.28 as issue #6 defines the baseline) and inserts the answer with SQLAlchemy. No job
table, no claim, no lease, no retry bookkeeping: what one writes without gmiq. Its own app, queue
and Redis prefix; same services, threads pool and concurrency.
A streamed call (`"stream": true` in the body) is read line by line to its end, its text deltas
joined, and the text, usage and time to first token stored; nobody is told of the deltas.

Run as a worker: `python -m bench.naive --concurrency 200 --client shared --http httpx2` with
gmiq's GMIQ_* environment (database, Redis, prefix, upstream URL and key).
"""

from __future__ import annotations

import argparse
import importlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import orjson
from celery import Celery
from sqlalchemy import BigInteger, DateTime, Engine, Text, create_engine, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.celery_worker import run_threads_worker
from worker.settings import Settings

NAIVE_QUEUE = "bench.naive"
NAIVE_TASK = "bench.naive.call_llm"
CLIENT_MODES = ("shared", "per-call")
# The HTTP packages the task can post with; both have the same API.
HTTP_PACKAGES = ("httpx2", "httpx")


class NaiveBase(DeclarativeBase):
    """The baseline's own metadata, kept apart from gmiq's."""


class NaiveResult(NaiveBase):
    """One stored answer."""

    __tablename__ = "bench_naive_result"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int]
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The bench's wall clock when it published the task, for the added latency.
    submitted_at: Mapped[float]
    # Streamed calls: seconds from sending the request to the first text delta.
    first_token_s: Mapped[float | None]
    finished_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


def create_table(engine: Engine) -> None:
    """Create the baseline's table in the run's database."""
    NaiveBase.metadata.create_all(engine)


def ready_key(redis_prefix: str) -> str:
    """The Redis key the naive worker sets once it consumes."""
    return f"{redis_prefix}-naive:ready"


def create_naive_app(settings: Settings) -> Celery:
    """Celery with its defaults (early acks, prefetch x4), on its own queue and key prefix."""
    app = Celery("gmiq_bench_naive", broker=settings.broker_url)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=NAIVE_QUEUE,
        broker_transport_options={"global_keyprefix": f"{settings.redis_prefix}-naive:"},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def register_task(app: Celery, settings: Settings, client_mode: str, package: str) -> None:
    """The task: post, then insert. `shared` keeps one pooled client sized for the concurrency
    (what a careful user writes); `per-call` uses `<package>.post` (what the quickstart shows),
    which builds a client, and its TLS context, on every call."""
    http: Any = importlib.import_module(package)
    engine = create_engine(settings.sqlalchemy_url, pool_size=settings.db_pool_size)
    url = settings.gmi_base_url + "chat/completions"
    key = settings.gmi_api_key.get_secret_value() if settings.gmi_api_key else ""
    headers = {"authorization": f"Bearer {key}"}
    limits = http.Limits(max_connections=1000, max_keepalive_connections=1000)
    shared = http.Client(timeout=60, limits=limits) if client_mode == "shared" else None

    @app.task(name=NAIVE_TASK)
    def call_llm(run: str, body: dict[str, Any], submitted_at: float) -> None:
        first_token_s = None
        if body.get("stream") is True:
            sent = time.monotonic()
            if shared is not None:
                streamed = shared.stream("POST", url, json=body, headers=headers)
            else:
                streamed = http.stream("POST", url, json=body, headers=headers, timeout=60)
            with streamed as response:
                answer, first_token_at = read_chat_stream(response)
            status_code = response.status_code
            first_token_s = None if first_token_at is None else first_token_at - sent
        else:
            if shared is not None:
                response = shared.post(url, json=body, headers=headers)
            else:
                response = http.post(url, json=body, headers=headers, timeout=60)
            status_code, answer = response.status_code, response.json()
        with Session(engine) as session, session.begin():
            session.add(
                NaiveResult(
                    run=run,
                    status_code=status_code,
                    body=answer,
                    submitted_at=submitted_at,
                    first_token_s=first_token_s,
                )
            )


def read_chat_stream(response: Any) -> tuple[dict[str, Any], float | None]:
    """Read a streamed chat completion to `[DONE]`: its joined text and usage, and when
    (time.monotonic()) the first text delta came."""
    texts: list[str] = []
    usage = None
    first_token_at = None
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = orjson.loads(line[6:])
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            text = choice.get("delta", {}).get("content")
            if text:
                first_token_at = first_token_at or time.monotonic()
                texts.append(text)
    return {"content": "".join(texts), "usage": usage}, first_token_at


def publish(
    app: Celery, run: str, body: dict[str, Any], count: int, threads: int, clock: Any
) -> None:
    """Publish `count` tasks from `threads` threads."""
    lock = threading.Lock()
    remaining = [count]

    def publish_some() -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            app.send_task(NAIVE_TASK, args=[run, body, clock()], queue=NAIVE_QUEUE)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(publish_some) for _ in range(threads)]:
            future.result()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the naive worker until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--client", choices=CLIENT_MODES, default="shared")
    parser.add_argument("--http", choices=HTTP_PACKAGES, default="httpx2")
    args = parser.parse_args(argv)
    settings = Settings()
    app = create_naive_app(settings)
    register_task(app, settings, args.client, args.http)
    run_threads_worker(
        app, args.concurrency, [NAIVE_QUEUE], settings.redis_url, ready_key(settings.redis_prefix)
    )


if __name__ == "__main__":
    main()
