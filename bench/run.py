"""`python -m bench.run` (`make bench`): gmiq against the upstream limit and a naive Celery task,
on the local Postgres and Redis, in one command that starts and stops everything it uses.

For each upstream latency: the simulator in its own process, then the cases of `bench.cases`;
then the same cases with streamed calls (`bench.streaming`); then the polling benchmark. Prints
a table per part and writes bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib import metadata
from types import FrameType
from typing import Any

from bench.cases import measure_latency, run_step
from bench.config import CASES, BenchConfig, Upstream
from bench.naive import CLIENT_MODES, create_table
from bench.polling import measure_polling
from bench.processes import start_simulator
from bench.report import (
    CaseResult,
    case_dicts,
    case_table,
    check_targets,
    drain_table,
    floor_comparison,
    polling_table,
    targets_table,
    write_json,
)
from bench.scaling import measure_floor, measure_scaling, measure_wide
from bench.stack import Stack
from bench.streaming import describe_streaming, measure_streaming, streaming_title
from bench.traffic import default_client

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
DRAIN_CASES = ("scaling", "floor", "wide")
OTHER_CASES = ("streaming", "polling")


def build_parser() -> argparse.ArgumentParser:
    """The options; `--quick` changes the defaults of the sizes, not explicit values."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (< 2 min)")
    parser.add_argument("--jobs", type=int, help="jobs per case (default 2000, quick 200)")
    parser.add_argument("--concurrency", type=int, help="calls in flight (default 200, quick 50)")
    parser.add_argument("--latencies", default="0,500", help="upstream latencies in ms")
    parser.add_argument(
        "--cases", default=",".join([*CASES, *DRAIN_CASES, *OTHER_CASES]), help="which cases"
    )
    parser.add_argument(
        "--scale-workers", default="1,2,4", help="worker processes of the scaling case"
    )
    parser.add_argument(
        "--wide-concurrency", type=int, default=1000, help="calls in flight of the wide case"
    )
    parser.add_argument("--wide-jobs", type=int, help="jobs of the wide case (default 4x it)")
    parser.add_argument("--producer-threads", type=int, default=16)
    parser.add_argument("--paced-rate", type=float, default=50.0, help="jobs/s of gmiq-paced")
    parser.add_argument("--paced-jobs", type=int, help="jobs of gmiq-paced (default 8 s' worth)")
    parser.add_argument("--naive-client", choices=CLIENT_MODES, default="shared")
    parser.add_argument("--client", choices=("aiohttp", "httpx2"), default=default_client())
    parser.add_argument(
        "--stream-cases",
        default=",".join(CASES),
        help="which cases run with streamed calls",
    )
    parser.add_argument("--stream-jobs", type=int, help="jobs per streamed case (default --jobs)")
    parser.add_argument(
        "--stream-chunk-delay-ms",
        type=float,
        default=62.5,
        help="simulator's pause between SSE frames (62.5: 500 ms per stream)",
    )
    parser.add_argument("--poll-rows", type=int, help="jobs in the table (default 100000)")
    parser.add_argument("--poll-requests", type=int, help="GETs per server (default 5000)")
    parser.add_argument("--poll-concurrency", type=int, default=32)
    parser.add_argument(
        "--poll-rate",
        type=float,
        help="GETs/s of the paced polling phase (default half the minimal handler's throughput)",
    )
    parser.add_argument("--deadline", type=float, help="seconds a case may take to finish")
    parser.add_argument("--postgres", default=LOCAL_POSTGRES, help="admin URL (loopback only)")
    parser.add_argument("--redis", default=LOCAL_REDIS, help="Redis URL (loopback only)")
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """Fill the sizes --quick or the moderate defaults leave open."""
    quick = args.quick
    jobs = args.jobs or (200 if quick else 2000)
    cases = _names(args.cases)
    stream_cases = _names(args.stream_cases)
    stream_jobs = args.stream_jobs or jobs
    unknown = (set(cases) - {*CASES, *DRAIN_CASES, *OTHER_CASES}) | (set(stream_cases) - {*CASES})
    if unknown:
        raise SystemExit(f"bench: unknown cases {sorted(unknown)}")
    return BenchConfig(
        jobs=jobs,
        concurrency=args.concurrency or (50 if quick else 200),
        latencies_ms=tuple(float(v) for v in args.latencies.split(",") if v.strip()),
        producer_threads=args.producer_threads,
        paced_rate=args.paced_rate,
        paced_jobs=args.paced_jobs or int(args.paced_rate * (2.5 if quick else 8)),
        naive_client=args.naive_client,
        client=args.client,
        deadline_s=args.deadline or 60 + max(jobs, stream_jobs) / 20,
        cases=cases,
        poll_rows=args.poll_rows or (2000 if quick else 100_000),
        poll_requests=args.poll_requests or (800 if quick else 5000),
        poll_concurrency=args.poll_concurrency,
        poll_rate=args.poll_rate,
        scale_workers=tuple(int(v) for v in args.scale_workers.split(",") if v.strip()),
        wide_concurrency=args.wide_concurrency,
        wide_jobs=args.wide_jobs or args.wide_concurrency * (2 if quick else 4),
        stream_cases=stream_cases,
        stream_jobs=stream_jobs,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for name in ("celery", "kombu", "sqlalchemy", "psycopg", "httpx2", "fastapi", "starlette"):
        found[name] = metadata.version(name)
    for name in ("uvicorn", "aiohttp", "uvloop", "httptools"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(config: BenchConfig, stack: Stack) -> dict[str, Any]:
    """Every latency's cases, then the streamed ones, then polling; returns the JSON document."""
    stack.open()
    create_table(stack.monitor())
    by_latency: dict[float, list[CaseResult]] = {}
    drains: list[CaseResult] = []
    api_key = "bench-" + secrets.token_hex(8)
    latency_cases = {*CASES, *DRAIN_CASES} & set(config.cases)
    for latency in config.latencies_ms if latency_cases else ():
        print(f"upstream latency {latency:g} ms:", flush=True)
        child, base_url = start_simulator(stack, latency, api_key)
        try:
            upstream = Upstream(child, base_url, api_key, latency)
            by_latency[latency] = measure_latency(stack, upstream, config)
            print(_latency_title(latency, config))
            print(case_table(by_latency[latency]) + "\n", flush=True)
            if latency == config.latencies_ms[-1]:
                drains = _drains(stack, upstream, config, by_latency[latency])
        finally:
            stack.stop(child)
    streaming = _streaming(stack, config, api_key)
    polling: dict[str, Any] = {"skipped": "not selected"}
    if "polling" in config.cases:
        print("polling ...", flush=True)
        polling = measure_polling(
            stack,
            config.poll_rows,
            config.poll_requests,
            config.poll_concurrency,
            config.deadline_s,
            config.client,
            config.poll_rate,
        )
    checks = check_targets(by_latency, polling, drains)
    return {
        "config": config.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_end": os.getloadavg(),
        },
        "versions": _versions(),
        "latencies": {f"{k:g}": case_dicts(v) for k, v in by_latency.items()},
        "drains": case_dicts(drains),
        "streaming": streaming,
        "polling": polling,
        "targets": checks,
    }


def _streaming(stack: Stack, config: BenchConfig, api_key: str) -> dict[str, Any]:
    """The streaming part, when selected; prints its table."""
    if "streaming" not in config.cases or not config.stream_cases:
        return {"skipped": "not selected"}
    pacing = describe_streaming(config)
    print(f"{pacing}:", flush=True)
    cases = measure_streaming(stack, config, api_key)
    print(streaming_title(config))
    print(case_table(cases) + "\n", flush=True)
    return {"pacing": pacing, "cases": case_dicts(cases)}


def _drains(
    stack: Stack, upstream: Upstream, config: BenchConfig, cases: list[CaseResult]
) -> list[CaseResult]:
    """The scaling and wide cases, at the last latency; prints their table."""
    limit = next((case for case in cases if case.case == "limit"), None)
    steps: list[tuple[str, Callable[[], list[CaseResult]]]] = [
        ("scaling", lambda: measure_scaling(stack, upstream, config, limit)),
        ("floor", lambda: [measure_floor(stack, upstream, config, limit)]),
        ("wide", lambda: measure_wide(stack, upstream, config)),
    ]
    drains: list[CaseResult] = []
    if limit is not None and {"scaling", "floor"} & set(config.cases):
        drains.append(
            replace(limit, case=f"limit-{config.concurrency}", in_flight=config.concurrency)
        )
    for name, step in steps:
        if name in config.cases:
            drains += run_step(name, step)
    if drains:
        print(f"\n== drains at upstream {upstream.latency_ms:g} ms (jobs preloaded) ==")
        print(drain_table(drains), flush=True)
        print(floor_comparison(drains) + "\n", flush=True)
    return drains


def _latency_title(latency: float, config: BenchConfig) -> str:
    return (
        f"\n== upstream {latency:g} ms, {config.jobs} jobs, concurrency {config.concurrency} "
        "(RSS: the worker process; pg/redis CPU is server-wide) =="
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print, save; everything started is stopped and removed on every exit."""
    args = build_parser().parse_args(argv)
    config = config_from(args)
    stack = Stack(admin_url=args.postgres, redis_url=args.redis)
    # Installed explicitly: a shell that starts us in the background ignores SIGINT otherwise.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    print(f"bench {stack.tag}: database {stack.database_name}, Redis prefix {stack.redis_prefix}")
    print(f"logs in {stack.logs}", flush=True)
    try:
        document = run(config, stack)
    except KeyboardInterrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        stack.close()
    document["duration_s"] = time.monotonic() - started
    print(polling_table(document["polling"]))
    print(targets_table(document["targets"]))
    path = write_json(document)
    print(f"\nresults: {path} ({document['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
