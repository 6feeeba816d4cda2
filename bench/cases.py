"""The cases at one upstream latency, each measured the same way: start its processes, take the
counters, push the jobs, poll Postgres until they are stored (with a deadline), read CPU while
the processes live, stop them, wait for the database to go idle, take the counters again.
On a streaming upstream every call is streamed and read to its end, and the time to first token
is kept too."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import orjson

from bench.config import CASES, BenchConfig, Upstream, bench_settings, run_tag, worker_env
from bench.meters import CpuMeter, RssSampler, Writes, read_writes
from bench.naive import create_naive_app, publish
from bench.pipeline import submit_via_api, submit_via_producer
from bench.processes import start_naive_worker, start_worker, start_worker_and_api
from bench.progress import (
    Progress,
    gmiq_durations,
    gmiq_first_tokens,
    gmiq_progress,
    naive_durations,
    naive_first_tokens,
    naive_progress,
    wait_for_progress,
)
from bench.report import CaseResult, percentiles
from bench.stack import Child, Stack
from bench.traffic import run_traffic
from bench.workload import CHAT_PATH, FIRST_TOKEN_MARKER, upstream_request


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
    body = orjson.dumps(upstream_request(upstream.stream))
    marker = FIRST_TOKEN_MARKER if upstream.stream else None
    headers = {"authorization": f"Bearer {upstream.api_key}", "content-type": "application/json"}

    def plan(_: int) -> tuple[str, str, bytes | None]:
        return "POST", url, body

    # Warm the simulator and open the connections; not measured.
    warmup = min(config.concurrency, config.jobs)
    run_traffic(plan, warmup, config.concurrency, headers, config.deadline_s, client=config.client)
    jobs = _case_jobs(config, upstream)
    cpu = CpuMeter({"sim": upstream.child.pid})
    traffic = run_traffic(
        plan,
        jobs,
        config.concurrency,
        headers,
        config.deadline_s,
        client=config.client,
        first_token=marker,
    )
    result = CaseResult("limit", upstream.latency_ms, jobs)
    result.cpu_ms_per_job = cpu.ms_per_job(jobs)
    result.completed = traffic.ok + sum(traffic.errors.values())
    result.succeeded = traffic.ok
    result.elapsed_s = traffic.elapsed_s
    result.jobs_per_s = traffic.ok / traffic.elapsed_s
    result.added_ms = percentiles([s * 1000 - upstream.latency_ms for s in traffic.latencies_s])
    result.first_token_ms = _first_token_ms(upstream, traffic.first_token_s)
    result.errors = dict(traffic.errors)
    result.note = f"client: {traffic.client}"
    return result


def _case_jobs(config: BenchConfig, upstream: Upstream) -> int:
    """Jobs per case: the streaming case has its own count."""
    return config.stream_jobs if upstream.stream else config.jobs


def _first_token_ms(upstream: Upstream, seconds: list[float]) -> dict[str, float] | None:
    """Time-to-first-token percentiles in ms, on a streaming upstream."""
    return percentiles([s * 1000 for s in seconds]) if upstream.stream else None


def measure_naive(
    stack: Stack, upstream: Upstream, config: BenchConfig, package: str = "httpx2"
) -> CaseResult:
    """The plain Celery task: post with httpx2 (`naive`) or httpx 0.28 (`naive-httpx`, the
    issue's baseline), insert with SQLAlchemy."""
    name = "naive" if package == "httpx2" else f"naive-{package}"
    tag = run_tag(stack, name, upstream)
    before = read_writes(stack.monitor())
    env = worker_env(stack, upstream, config.concurrency)
    worker = start_naive_worker(stack, env, config.concurrency, config.naive_client, package)
    app = create_naive_app(bench_settings(stack, upstream))
    cpu = CpuMeter({"worker": worker.pid, "sim": upstream.child.pid})
    jobs = _case_jobs(config, upstream)
    body = upstream_request(upstream.stream)
    result = CaseResult(name, upstream.latency_ms, jobs)
    try:
        with RssSampler(worker.pid) as rss:
            started_at = time.time()
            publish(app, tag, body, jobs, config.producer_threads, time.time)
            result.submit_per_s = jobs / max(time.time() - started_at, 1e-9)
            progress, complete = wait_for_progress(
                lambda: naive_progress(stack.monitor(), tag),
                jobs,
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
    result.first_token_ms = _first_token_ms(upstream, naive_first_tokens(stack.monitor(), tag))
    if not result.note:
        result.note = f"{package} client: {config.naive_client}"
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
    jobs = config.paced_jobs if paced else _case_jobs(config, upstream)
    tag = run_tag(stack, name, upstream)
    cpu = CpuMeter({"worker": worker.pid, "api": api.pid, "sim": upstream.child.pid})
    result = CaseResult(name, upstream.latency_ms, jobs)

    def alive() -> None:
        worker.check_alive()
        api.check_alive()

    since = time.time() - 1
    rate = config.paced_rate if paced else None
    traffic = submit_via_api(
        api_url,
        tag,
        jobs,
        config.concurrency,
        config.deadline_s,
        rate,
        config.client,
        upstream.stream,
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
    first_tokens = gmiq_first_tokens(stack.monitor(), tag, since)
    result.first_token_ms = _first_token_ms(upstream, first_tokens)
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
    jobs = _case_jobs(config, upstream)
    result = CaseResult("gmiq-producer", upstream.latency_ms, jobs)
    try:
        with RssSampler(worker.pid) as rss:
            since = time.time() - 1
            submitted = submit_via_producer(
                bench_settings(stack, upstream),
                tag,
                jobs,
                config.producer_threads,
                config.deadline_s,
                upstream.stream,
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
    first_tokens = gmiq_first_tokens(stack.monitor(), tag, since)
    result.first_token_ms = _first_token_ms(upstream, first_tokens)
    result.note = result.note or f"{config.producer_threads} producer threads in the bench process"
    return result


def measure_latency(stack: Stack, upstream: Upstream, config: BenchConfig) -> list[CaseResult]:
    """Every selected case at this upstream latency; returned in the order of CASES."""
    results: list[CaseResult] = []
    steps: list[tuple[str, Callable[[], list[CaseResult]]]] = [
        ("limit", lambda: [measure_limit(stack, upstream, config)]),
        ("naive", lambda: [measure_naive(stack, upstream, config)]),
        ("naive-httpx", lambda: [measure_naive(stack, upstream, config, "httpx")]),
        (
            "gmiq-paced, gmiq-api",
            lambda: measure_gmiq_api(
                stack, upstream, config, "gmiq-paced" in config.cases, "gmiq-api" in config.cases
            ),
        ),
        ("gmiq-producer", lambda: [measure_gmiq_producer(stack, upstream, config)]),
    ]
    for names, step in steps:
        if any(name in config.cases for name in names.split(", ")):
            results += run_step(names, step)
    return sorted(results, key=lambda result: CASES.index(result.case))


def run_step(names: str, step: Callable[[], list[CaseResult]]) -> list[CaseResult]:
    """Run one step of cases, stamping each with the load average it started at, and print a
    progress line with each case's jobs/s."""
    print(f"  {names} ...", end="", flush=True)
    began = time.monotonic()
    load = os.getloadavg()[0]
    done = step()
    for result in done:
        result.load_avg = load
    rates = ", ".join(f"{result.case} {result.jobs_per_s:,.1f}" for result in done)
    print(f" {rates} jobs/s ({time.monotonic() - began:.0f} s, load {load:.1f})", flush=True)
    return done
