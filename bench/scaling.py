"""Worker capacity with the submitter out of the way: the jobs are written to Postgres first with
their messages held back, the worker processes start, then every message is published at once
and the case times the drain (first publish to last `finished_at`).

Three uses: 1, 2 and 4 worker processes sharing the same number of calls in flight (does a
second process help, or is the machine the limit?), 1,000 calls in flight in one process
(its throughput and peak memory), and Celery's own floor: the same drain of a task that only
waits the upstream latency, on gmiq's Celery configuration (`bench.floor`). Each result names
the bound it hit."""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace

from api_contracts.jobs import JobSubmitRequest
from api_contracts.messages import JobMessage
from bench.cases import measure_limit, store_outcome
from bench.config import BenchConfig, Upstream, bench_settings, run_tag, worker_env
from bench.floor import publish as publish_floor_tasks
from bench.floor import ready_key
from bench.meters import CpuMeter, RssSampler
from bench.processes import start_workers
from bench.progress import gmiq_durations, gmiq_progress, wait_for_progress
from bench.report import CaseResult, percentiles
from bench.stack import Stack
from bench.workload import job_submission
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.db import make_engine, make_sessionmaker
from worker.producer import JobProducer
from worker.queues import publish_job, queue_depths, reuse_broker_clients
from worker.waiting import wait_for

# A bound counts as hit at this fraction of it.
_NEAR = 0.85


def _write_jobs(
    stack: Stack, upstream: Upstream, tag: str, jobs: int, threads: int
) -> list[JobMessage]:
    """Insert the jobs (their redispatch is 10 min away) and return their unpublished messages."""
    settings = bench_settings(stack, upstream)
    engine = make_engine(settings.database_url, pool_size=threads)
    held: list[JobMessage] = []
    producer = JobProducer(make_sessionmaker(engine), held.append, settings.default_model)
    submission = JobSubmitRequest.model_validate(job_submission(tag))
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="preload") as pool:
            list(pool.map(lambda _: producer.submit(submission), range(jobs)))
    finally:
        engine.dispose()
    return held


def _publish_all(stack: Stack, upstream: Upstream, messages: list[JobMessage]) -> None:
    app = create_celery_app(bench_settings(stack, upstream))
    reuse_broker_clients()
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="publish") as pool:
            list(pool.map(lambda message: publish_job(app, message), messages))
    finally:
        app.close()


def bound_hit(
    result: CaseResult, in_flight: int, ceiling: float | None, machine_busy: float, cores: int
) -> str:
    """Which limit the drain ran into: the upstream (in flight ÷ latency, or the measured limit),
    the machine's CPU, one core per worker process (the GIL), or none of these."""
    busiest = max(result.worker_busy or [0.0])
    if ceiling and result.jobs_per_s >= _NEAR * ceiling:
        return f"upstream: {in_flight} in flight allow {ceiling:,.0f} jobs/s"
    if machine_busy >= _NEAR:
        return f"machine CPU: {machine_busy:.0%} of {cores} cores busy"
    if busiest >= _NEAR:
        return f"one core per worker process (GIL): busiest worker at {busiest:.0%} of a core"
    return (
        f"none of CPU ({machine_busy:.0%} busy), GIL (busiest worker {busiest:.0%}) or upstream:"
        " waiting on Postgres, Redis or locks"
    )


def measure_drain(
    stack: Stack,
    upstream: Upstream,
    config: BenchConfig,
    name: str,
    workers: int,
    in_flight: int,
    jobs: int,
    limit: CaseResult | None,
) -> CaseResult:
    """`jobs` preloaded jobs drained by `workers` processes with `in_flight` calls between them."""
    tag = run_tag(stack, name, upstream)
    result = CaseResult(name, upstream.latency_ms, jobs, workers=workers, in_flight=in_flight)
    since = time.time() - 1
    held = _write_jobs(stack, upstream, tag, jobs, config.producer_threads)
    per_worker = math.ceil(in_flight / workers)
    children = start_workers(stack, worker_env(stack, upstream, per_worker), per_worker, workers)
    pids = {f"worker{n}": child.pid for n, child in enumerate(children)}
    try:
        with ExitStack() as sampling:
            samplers = [sampling.enter_context(RssSampler(child.pid)) for child in children]
            cpu = CpuMeter({**pids, "sim": upstream.child.pid})
            started_at = time.time()
            window = time.monotonic()
            _publish_all(stack, upstream, held)

            def alive() -> None:
                for child in children:
                    child.check_alive()

            progress, complete = wait_for_progress(
                lambda: gmiq_progress(stack.monitor(), tag, since),
                len(held),
                config.deadline_s,
                alive,
            )
            used = cpu.seconds()
            # Busy fractions over the window the CPU was read over (to the last progress poll).
            window = time.monotonic() - window
            result.cpu_ms_per_job = cpu.ms_per_job(progress.done)
    finally:
        stack.stop(*children)
    durations, waits = gmiq_durations(stack.monitor(), tag, since)
    store_outcome(result, started_at, progress, complete, durations)
    result.claim_wait_ms = percentiles([w * 1000 for w in waits])
    result.worker_busy = [used[name] / window for name in pids]
    result.peak_rss_mb = max(sampler.peak_bytes for sampler in samplers) / 2**20
    _name_bound(result, upstream, used, window, limit)
    return result


def _name_bound(
    result: CaseResult,
    upstream: Upstream,
    used: dict[str, float],
    window: float,
    limit: CaseResult | None,
) -> None:
    cores = os.cpu_count() or 1
    result.machine_busy = used["machine"] / (window * cores)
    in_flight = result.in_flight or 0
    ceiling = limit.jobs_per_s if limit is not None else None
    if ceiling is None and upstream.latency_ms > 0:
        ceiling = in_flight / (upstream.latency_ms / 1000)
    result.bound = bound_hit(result, in_flight, ceiling, result.machine_busy, cores)


def measure_floor(
    stack: Stack, upstream: Upstream, config: BenchConfig, limit: CaseResult | None
) -> CaseResult:
    """One process of gmiq's Celery configuration draining `--jobs` tasks that only wait the
    upstream latency, `--concurrency` at a time: what Celery costs before gmiq does anything."""
    in_flight = config.concurrency
    result = CaseResult("floor-1", upstream.latency_ms, config.jobs, in_flight=in_flight)
    prefix = f"{stack.redis_prefix}-floor"
    env = worker_env(stack, upstream, in_flight) | {"GMIQ_REDIS_PREFIX": prefix}
    args = ["--concurrency", str(in_flight), "--wait-ms", f"{upstream.latency_ms:g}"]
    child = stack.spawn("floor-worker", [sys.executable, "-m", "bench.floor", *args], env)
    settings = bench_settings(stack, upstream).model_copy(update={"redis_prefix": prefix})
    app = create_celery_app(settings)  # publishes by task name: no task to register
    reuse_broker_clients()
    client = stack.redis()

    def ready() -> bool:
        child.check_alive()
        return bool(client.get(ready_key(prefix)))

    empty_since: list[float] = []

    def drained() -> bool:
        # Nothing waiting and nothing unacknowledged, twice 0.1 s apart: a message between the
        # worker's BRPOP and its unacked record is in neither for an instant.
        child.check_alive()
        if sum(queue_depths(client, broker_key_prefix(settings)).values()):
            empty_since.clear()
            return False
        if not empty_since:
            empty_since.append(time.time())
        return time.time() - empty_since[0] >= 0.1

    try:
        wait_for(ready, 90, "the floor worker to start consuming")
        with RssSampler(child.pid) as rss:
            cpu = CpuMeter({"worker0": child.pid})
            window = time.monotonic()
            started_at = time.time()
            publish_floor_tasks(app, config.jobs)
            wait_for(drained, config.deadline_s, "the floor worker to drain", every_s=0.01)
            ended_at = empty_since[0]
            used = cpu.seconds()
            window = time.monotonic() - window - 0.1
            result.cpu_ms_per_job = cpu.ms_per_job(config.jobs)
    finally:
        stack.stop(child)
        app.close()
        client.close()
    result.completed = result.succeeded = config.jobs
    result.elapsed_s = ended_at - started_at
    result.jobs_per_s = config.jobs / result.elapsed_s
    result.worker_busy = [used["worker0"] / window]
    result.peak_rss_mb = rss.peak_bytes / 2**20
    result.note = "Celery's floor: gmiq's Celery app, a task that only waits the upstream latency"
    _name_bound(result, upstream, used, window, limit)
    return result


def measure_scaling(
    stack: Stack, upstream: Upstream, config: BenchConfig, limit: CaseResult | None
) -> list[CaseResult]:
    """The same drain on 1, 2, 4 (`--scale-workers`) processes sharing `--concurrency`."""
    return [
        measure_drain(
            stack, upstream, config, f"scale-{n}", n, config.concurrency, config.jobs, limit
        )
        for n in config.scale_workers
    ]


def measure_wide(stack: Stack, upstream: Upstream, config: BenchConfig) -> list[CaseResult]:
    """The limit at `--wide-concurrency`, then one process with that many calls in flight."""
    wide = replace(config, concurrency=config.wide_concurrency, jobs=config.wide_jobs)
    limit = measure_limit(stack, upstream, wide)
    limit.case = f"limit-{config.wide_concurrency}"
    limit.in_flight = config.wide_concurrency
    name = f"wide-{config.wide_concurrency}"
    drain = measure_drain(
        stack, upstream, wide, name, 1, config.wide_concurrency, config.wide_jobs, limit
    )
    return [limit, drain]
