"""The cases at one upstream latency, each measured the same way: start its processes, take the
counters, push the jobs, poll Postgres until they are stored (with a deadline), read CPU while
the processes live, stop them, wait for the database to go idle, take the counters again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bench.meters import CpuMeter, RssSampler, Writes, read_writes
from bench.naive import create_naive_app, publish
from bench.pipeline import submit_via_api, submit_via_producer
from bench.processes import start_naive_worker, start_worker, start_worker_and_api
from bench.progress import (
    Progress,
    gmiq_durations,
    gmiq_progress,
    naive_durations,
    naive_progress,
    wait_for_progress,
)
from bench.report import CaseResult, percentiles
from bench.stack import Child, Stack
from bench.traffic import run_traffic
from bench.workload import CHAT_PATH, chat_request
from worker.settings import Settings

CASES = ("limit", "naive", "gmiq-api", "gmiq-producer", "gmiq-paced")


@dataclass(frozen=True)
class BenchConfig:
    """The run's knobs (see `python -m bench.run --help`)."""

    jobs: int
    concurrency: int
    latencies_ms: tuple[float, ...]
    producer_threads: int
    paced_rate: float
    paced_jobs: int
    naive_client: str
    client: str
    deadline_s: float
    cases: tuple[str, ...]
    poll_rows: int
    poll_requests: int
    poll_concurrency: int
    # Drain cases (bench.scaling), at the last latency: worker processes to compare, and the
    # single-process case's calls in flight and jobs.
    scale_workers: tuple[int, ...] = (1, 2, 4)
    wide_concurrency: int = 1000
    wide_jobs: int = 4000


@dataclass(frozen=True)
class Upstream:
    """The simulator serving this latency."""

    child: Child
    base_url: str
    api_key: str
    latency_ms: float


def worker_env(stack: Stack, upstream: Upstream, concurrency: int) -> dict[str, str]:
    return stack.env(
        GMIQ_GMI_BASE_URL=upstream.base_url,
        GMIQ_GMI_API_KEY=upstream.api_key,
        GMIQ_WORKER_CONCURRENCY=str(concurrency),
        GMIQ_READ_TIMEOUT_S="60",
    )


def bench_settings(stack: Stack, upstream: Upstream) -> Settings:
    return Settings(
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        redis_prefix=stack.redis_prefix,
        gmi_base_url=upstream.base_url,
        gmi_api_key=upstream.api_key,
    )


def run_tag(stack: Stack, case: str, upstream: Upstream) -> str:
    return f"{stack.tag}-{case}-{upstream.latency_ms:g}"


def _settled_writes(stack: Stack, before: Writes, jobs: int) -> dict[str, float]:
    """Writes per job since `before`, once every writer has disconnected."""
    stack.wait_database_idle()
    delta = read_writes(stack.monitor()).minus(before)
    per = max(jobs, 1)
    return {
        "rows_inserted": delta.inserted / per,
        "rows_updated": delta.updated / per,
        "relation_bytes": delta.relation_bytes / per,
        "wal_bytes": delta.wal_bytes / per,
    }


def store_outcome(
    result: CaseResult,
    started_at: float,
    progress: Progress,
    complete: bool,
    durations_s: list[float],
) -> None:
    """Fill throughput and added latency from what Postgres holds."""
    result.completed = progress.done
    result.succeeded = progress.succeeded
    end = progress.last_finished_at or time.time()
    result.elapsed_s = max(end - started_at, 1e-9)
    result.jobs_per_s = progress.done / result.elapsed_s
    result.added_ms = percentiles([d * 1000 - result.latency_ms for d in durations_s])
    problems = []
    if not complete:
        problems.append(f"deadline passed with {progress.done}/{result.jobs} jobs ended")
    elif progress.done < result.jobs:
        problems.append(f"only {progress.done}/{result.jobs} jobs were accepted and ended")
    if progress.succeeded < progress.done:
        problems.append(f"{progress.done - progress.succeeded} jobs did not succeed")
    if result.errors:
        problems.append(f"submission errors {result.errors}")
    if problems:
        result.note = "; ".join(problems) + " (see the logs)"


def measure_limit(stack: Stack, upstream: Upstream, config: BenchConfig) -> CaseResult:
    """The same calls straight to the simulator from one asyncio client."""
    url = upstream.base_url + CHAT_PATH
    body = orjson.dumps(chat_request())
    headers = {"authorization": f"Bearer {upstream.api_key}", "content-type": "application/json"}

    def plan(_: int) -> tuple[str, str, bytes | None]:
        return "POST", url, body

    # Warm the simulator and open the connections; not measured.
    warmup = min(config.concurrency, config.jobs)
    run_traffic(plan, warmup, config.concurrency, headers, config.deadline_s, client=config.client)
    cpu = CpuMeter({"sim": upstream.child.pid})
    traffic = run_traffic(
        plan, config.jobs, config.concurrency, headers, config.deadline_s, client=config.client
    )
    result = CaseResult("limit", upstream.latency_ms, config.jobs)
    result.cpu_ms_per_job = cpu.ms_per_job(config.jobs)
    result.completed = traffic.ok + sum(traffic.errors.values())
    result.succeeded = traffic.ok
    result.elapsed_s = traffic.elapsed_s
    result.jobs_per_s = traffic.ok / traffic.elapsed_s
    result.added_ms = percentiles([s * 1000 - upstream.latency_ms for s in traffic.latencies_s])
    result.errors = dict(traffic.errors)
    result.note = f"client: {traffic.client}"
    return result


def measure_naive(stack: Stack, upstream: Upstream, config: BenchConfig) -> CaseResult:
    """The plain Celery task: post with httpx2, insert with SQLAlchemy."""
    tag = run_tag(stack, "naive", upstream)
    before = read_writes(stack.monitor())
    env = worker_env(stack, upstream, config.concurrency)
    worker = start_naive_worker(stack, env, config.concurrency, config.naive_client)
    app = create_naive_app(bench_settings(stack, upstream))
    cpu = CpuMeter({"worker": worker.pid, "sim": upstream.child.pid})
    result = CaseResult("naive", upstream.latency_ms, config.jobs)
    try:
        with RssSampler(worker.pid) as rss:
            started_at = time.time()
            publish(app, tag, chat_request(), config.jobs, config.producer_threads, time.time)
            result.submit_per_s = config.jobs / max(time.time() - started_at, 1e-9)
            progress, complete = wait_for_progress(
                lambda: naive_progress(stack.monitor(), tag),
                config.jobs,
                config.deadline_s,
                worker.check_alive,
            )
        result.cpu_ms_per_job = cpu.ms_per_job(progress.done)
    finally:
        stack.stop(worker)
        app.close()
    result.peak_rss_mb = rss.peak_bytes / 2**20
    result.writes_per_job = _settled_writes(stack, before, progress.done)
    store_outcome(result, started_at, progress, complete, naive_durations(stack.monitor(), tag))
    if not result.note:
        result.note = f"httpx2 client: {config.naive_client}"
    return result


def measure_gmiq_api(
    stack: Stack, upstream: Upstream, config: BenchConfig, paced: bool, burst: bool
) -> list[CaseResult]:
    """Jobs posted to `POST /v1/jobs`, on one worker and one API: first open loop at the paced
    rate (for the added latency), then closed loop at the concurrency (for throughput). Both
    take the same path, so Postgres writes are counted over both."""
    before = read_writes(stack.monitor())
    env = worker_env(stack, upstream, config.concurrency)
    worker, api, api_url = start_worker_and_api(stack, env, config.concurrency)
    results: list[CaseResult] = []
    try:
        with RssSampler(worker.pid) as rss:
            for phase_paced in [flag for flag, wanted in ((True, paced), (False, burst)) if wanted]:
                result = _api_phase(stack, upstream, config, (worker, api, api_url), phase_paced)
                result.peak_rss_mb = rss.peak_bytes / 2**20
                results.append(result)
    finally:
        stack.stop(api, worker)
    writes = _settled_writes(stack, before, sum(result.completed for result in results))
    for result in results:
        result.writes_per_job = writes
    return results


def _api_phase(
    stack: Stack,
    upstream: Upstream,
    config: BenchConfig,
    processes: tuple[Child, Child, str],
    paced: bool,
) -> CaseResult:
    worker, api, api_url = processes
    name = "gmiq-paced" if paced else "gmiq-api"
    jobs = config.paced_jobs if paced else config.jobs
    tag = run_tag(stack, name, upstream)
    cpu = CpuMeter({"worker": worker.pid, "api": api.pid, "sim": upstream.child.pid})
    result = CaseResult(name, upstream.latency_ms, jobs)

    def alive() -> None:
        worker.check_alive()
        api.check_alive()

    since = time.time() - 1
    rate = config.paced_rate if paced else None
    traffic = submit_via_api(
        api_url, tag, jobs, config.concurrency, config.deadline_s, rate, config.client
    )
    result.submit_per_s = traffic.ok / traffic.elapsed_s
    result.errors = {str(k): v for k, v in traffic.statuses.items() if k != 202}
    result.errors.update(traffic.errors)
    progress, complete = wait_for_progress(
        lambda: gmiq_progress(stack.monitor(), tag, since), traffic.ok, config.deadline_s, alive
    )
    result.cpu_ms_per_job = cpu.ms_per_job(progress.done)
    durations, waits = gmiq_durations(stack.monitor(), tag, since)
    store_outcome(result, traffic.started_at, progress, complete, durations)
    result.claim_wait_ms = percentiles([w * 1000 for w in waits])
    if paced and not result.note:
        result.note = f"open loop at {config.paced_rate:g} jobs/s: read added latency, not jobs/s"
    return result


def measure_gmiq_producer(stack: Stack, upstream: Upstream, config: BenchConfig) -> CaseResult:
    """Jobs submitted by the Python producer from threads in this process."""
    tag = run_tag(stack, "gmiq-producer", upstream)
    before = read_writes(stack.monitor())
    env = worker_env(stack, upstream, config.concurrency)
    worker = start_worker(stack, env, config.concurrency)
    cpu = CpuMeter({"worker": worker.pid, "sim": upstream.child.pid})
    result = CaseResult("gmiq-producer", upstream.latency_ms, config.jobs)
    try:
        with RssSampler(worker.pid) as rss:
            since = time.time() - 1
            submitted = submit_via_producer(
                bench_settings(stack, upstream),
                tag,
                config.jobs,
                config.producer_threads,
                config.deadline_s,
            )
            result.submit_per_s = submitted.submitted / submitted.elapsed_s
            result.errors = dict(submitted.errors)
            progress, complete = wait_for_progress(
                lambda: gmiq_progress(stack.monitor(), tag, since),
                submitted.submitted,
                config.deadline_s,
                worker.check_alive,
            )
        result.cpu_ms_per_job = cpu.ms_per_job(progress.done)
    finally:
        stack.stop(worker)
    result.peak_rss_mb = rss.peak_bytes / 2**20
    result.writes_per_job = _settled_writes(stack, before, progress.done)
    durations, waits = gmiq_durations(stack.monitor(), tag, since)
    store_outcome(result, submitted.started_at, progress, complete, durations)
    result.claim_wait_ms = percentiles([w * 1000 for w in waits])
    result.note = result.note or f"{config.producer_threads} producer threads in the bench process"
    return result


def measure_latency(stack: Stack, upstream: Upstream, config: BenchConfig) -> list[CaseResult]:
    """Every selected case at this upstream latency; returned in the order of CASES."""
    results: list[CaseResult] = []
    steps: list[tuple[str, Callable[[], list[CaseResult]]]] = [
        ("limit", lambda: [measure_limit(stack, upstream, config)]),
        ("naive", lambda: [measure_naive(stack, upstream, config)]),
        (
            "gmiq-paced, gmiq-api",
            lambda: measure_gmiq_api(
                stack, upstream, config, "gmiq-paced" in config.cases, "gmiq-api" in config.cases
            ),
        ),
        ("gmiq-producer", lambda: [measure_gmiq_producer(stack, upstream, config)]),
    ]
    for names, step in steps:
        if not any(name in config.cases for name in names.split(", ")):
            continue
        print(f"  {names} ...", end="", flush=True)
        began = time.monotonic()
        load = os.getloadavg()[0]
        done = step()
        for result in done:
            result.load_avg = load
        rates = ", ".join(f"{result.jobs_per_s:,.1f}" for result in done)
        took = time.monotonic() - began
        print(f" {rates} jobs/s ({took:.0f} s, load {load:.1f})", flush=True)
        results += done
    return sorted(results, key=lambda result: CASES.index(result.case))
