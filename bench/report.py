"""Results: one record per case, the issue's targets checked against them, the printed table
and the JSON file in bench/results/."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p99 and max (nearest rank) of the values, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


@dataclass
class CaseResult:
    """One case at one upstream latency."""

    case: str
    latency_ms: float
    jobs: int
    completed: int = 0
    succeeded: int = 0
    elapsed_s: float = 0.0
    jobs_per_s: float = 0.0
    # How fast jobs went in (API or producer), when submission is separate from processing.
    submit_per_s: float | None = None
    # Time from submission to stored result, minus the upstream latency, in ms.
    added_ms: dict[str, float] | None = None
    # gmiq only: time from insert to claim (queueing), in ms; added minus this is the work.
    claim_wait_ms: dict[str, float] | None = None
    # Streamed calls: time from sending the upstream request to the first text delta, in ms (as
    # the caller saw it for `limit`, as the worker saw it for the others: gmiq's attempt rows).
    first_token_ms: dict[str, float] | None = None
    peak_rss_mb: float | None = None
    # CPU ms per job of each process involved; postgres and redis are server-wide.
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    # Postgres: row inserts and updates, relation bytes and WAL bytes per job.
    writes_per_job: dict[str, float] | None = None
    errors: dict[str, int] = field(default_factory=dict)
    # The machine's 1-minute load average when the case started (2 cores: above 2 is queueing).
    load_avg: float = 0.0
    note: str = ""
    # Drain cases (bench.scaling): worker processes, calls in flight between them, each
    # worker's CPU over the drain as a fraction of one core, the machine's (of all cores), and
    # the bound the drain ran into.
    workers: int = 1
    in_flight: int | None = None
    worker_busy: list[float] | None = None
    machine_busy: float | None = None
    bound: str = ""


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def case_table(cases: list[CaseResult]) -> str:
    """Two tables for one latency: speed and latency, then cost per job."""
    by_name = {case.case: case for case in cases}
    limit = by_name.get("limit")
    naive = by_name.get("naive")
    naive_httpx = by_name.get("naive-httpx")
    streamed = any(case.first_token_ms for case in cases)
    speed = (
        f"{'case':<15}{'jobs/s':>9}{'x limit':>9}{'x naive':>9}{'x httpx':>9}{'submit/s':>10}"
        f"{'added p50':>11}{'p99':>9}{'claim wait p50':>16}{'p99':>9}"
        + (f"{'TTFT p50':>10}{'p99':>9}" if streamed else "")
        + "  (ms)"
    )
    lines = [speed, "-" * len(speed)]
    for case in cases:
        added = case.added_ms or {}
        wait = case.claim_wait_ms or {}
        first = case.first_token_ms or {}
        lines.append(
            f"{case.case:<15}{_fmt(case.jobs_per_s, 1):>9}"
            f"{_fmt(ratio(case.jobs_per_s, limit.jobs_per_s if limit else None), 2):>9}"
            f"{_fmt(ratio(case.jobs_per_s, naive.jobs_per_s if naive else None), 2):>9}"
            f"{_fmt(ratio(case.jobs_per_s, naive_httpx.jobs_per_s if naive_httpx else None), 2):>9}"
            f"{_fmt(case.submit_per_s, 0):>10}{_fmt(added.get('p50'), 1):>11}"
            f"{_fmt(added.get('p99'), 1):>9}{_fmt(wait.get('p50'), 1):>16}"
            f"{_fmt(wait.get('p99'), 1):>9}"
            + (f"{_fmt(first.get('p50'), 1):>10}{_fmt(first.get('p99'), 1):>9}" if streamed else "")
        )
        if case.completed < case.jobs or case.note:
            lines.append(f"{'':<15}{case.note}")
    names = ("worker", "api", "postgres", "redis", "sim", "client", "others")
    cost = (
        f"{'case':<15}{'worker RSS MB':>14}  {'CPU ms/job: ' + ' '.join(names):<59}"
        f"{'rows ins/upd':>13}{'bytes':>8}{'WAL bytes':>11}  (per job)"
    )
    lines += ["", cost, "-" * len(cost)]
    for case in cases:
        cpu = case.cpu_ms_per_job
        cpu_text = " ".join(f"{_fmt(cpu.get(name), 2):>{len(name)}}" for name in names)
        writes = case.writes_per_job or {}
        rows = (
            f"{_fmt(writes.get('rows_inserted'), 1)}/{_fmt(writes.get('rows_updated'), 1)}"
            if writes
            else "-"
        )
        lines.append(
            f"{case.case:<15}{_fmt(case.peak_rss_mb, 0):>14}  {' ' * 12 + cpu_text:<59}"
            f"{rows:>13}{_fmt(writes.get('relation_bytes'), 0):>8}"
            f"{_fmt(writes.get('wal_bytes'), 0):>11}"
        )
    return "\n".join(lines)


def drain_table(cases: list[CaseResult]) -> str:
    """The drain cases: throughput, CPU per worker process, memory, and the bound hit."""
    limits = {case.in_flight: case for case in cases if case.case.startswith("limit")}
    header = (
        f"{'case':<12}{'workers':>8}{'in flight':>10}{'jobs/s':>9}{'x limit':>9}"
        f"{'worker CPU (of a core)':>24}{'machine':>9}{'RSS MB/worker':>15}  bound"
    )
    lines = [header, "-" * (len(header) + 30)]
    for case in cases:
        limit = limits.get(case.in_flight)
        x_limit = None if limit in (None, case) else _r(case, limit)
        busy = " ".join(f"{value:.0%}" for value in case.worker_busy or []) or "-"
        machine = f"{case.machine_busy:.0%}" if case.machine_busy is not None else "-"
        lines.append(
            f"{case.case:<12}{case.workers if case.worker_busy else '-':>8}"
            f"{_fmt(case.in_flight, 0):>10}{_fmt(case.jobs_per_s, 1):>9}{_fmt(x_limit, 2):>9}"
            f"{busy:>24}{machine:>9}{_fmt(case.peak_rss_mb, 0):>15}  {case.bound}"
        )
        if case.completed < case.jobs or (case.note and not case.case.startswith("limit")):
            lines.append(f"{'':<12}{case.note}")
    return "\n".join(lines)


def floor_comparison(cases: list[CaseResult]) -> str:
    """One worker process's CPU per job against Celery's floor (`floor-1`), when both ran."""
    by_name = {case.case: case for case in cases}
    gmiq, floor = by_name.get("scale-1"), by_name.get("floor-1")
    if gmiq is None or floor is None:
        return ""
    mine, base = gmiq.cpu_ms_per_job.get("worker0"), floor.cpu_ms_per_job.get("worker0")
    speed = ratio(gmiq.jobs_per_s, floor.jobs_per_s)
    return (
        f"one worker process, CPU per job: gmiq {_fmt(mine, 2)} ms, Celery's floor (same app"
        f" configuration, a task that only waits) {_fmt(base, 2)} ms: gmiq = "
        f"{_fmt(ratio(mine, base), 2)}x the floor's CPU, {_fmt(speed, 2)}x its jobs/s"
    )


def polling_table(polling: dict[str, Any]) -> str:
    """The polling comparison."""
    if "skipped" in polling:
        return f"polling: skipped ({polling['skipped']})"
    lines = [
        f"polling GET /v1/jobs/{{id}}: {polling['rows']:,} jobs in the table, "
        f"{polling['requests']:,} requests over {polling['concurrency']} connections"
    ]
    for name in ("gmiq", "minimal"):
        side = polling[name]
        latency = side["latency_ms"] or {}
        lines.append(
            f"  {name:<8}{side['requests_per_s']:>9,.0f} req/s   p50 {_fmt(latency.get('p50'), 1)}"
            f" ms   p99 {_fmt(latency.get('p99'), 1)} ms   server CPU "
            f"{_fmt(side['server_cpu_ms_per_request'], 2)} ms/req   errors {side['errors']}"
        )
    lines.append(f"  gmiq / minimal = {_fmt(polling['ratio'], 2)}")
    paced = polling.get("paced")
    if paced:
        lines.append(f"  both at {paced['rate_per_s']:,.0f} req/s (open loop):")
        for name in ("gmiq", "minimal"):
            latency = paced[name]["latency_ms"] or {}
            lines.append(
                f"  {name:<8}p50 {_fmt(latency.get('p50'), 1)} ms   p99 "
                f"{_fmt(latency.get('p99'), 1)} ms   errors {paced[name]['errors']}"
            )
    return "\n".join(lines)


def check_targets(
    by_latency: dict[float, list[CaseResult]],
    polling: dict[str, Any],
    drains: list[CaseResult] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, target: float, higher_is_better: bool) -> None:
        met = None
        if measured is not None:
            met = measured >= target if higher_is_better else measured <= target
        checks.append({"target": name, "measured": measured, "goal": target, "met": met})

    for latency, cases in sorted(by_latency.items()):
        by_name = {case.case: case for case in cases}
        limit = by_name.get("limit")
        # The baseline posts with httpx 0.28; `naive` (httpx2) is the stronger one.
        naives = [(name, by_name[name]) for name in ("naive-httpx", "naive") if name in by_name]
        for path in ("gmiq-api", "gmiq-producer"):
            case = by_name.get(path)
            if case is None:
                continue
            if latency >= 500:
                add(f"{latency:g} ms {path} / limit", _r(case, limit), 0.9, True)
            for name, naive in naives:
                if latency >= 500:
                    add(f"{latency:g} ms {path} / {name}", _r(case, naive), 4.0, True)
                elif latency == 0:
                    add(f"0 ms {path} / {name}", _r(case, naive), 1.5, True)
        paced = by_name.get("gmiq-paced")
        if paced is not None and paced.added_ms is not None:
            add(f"{latency:g} ms paced added p50 (ms)", paced.added_ms["p50"], 10.0, False)
            add(f"{latency:g} ms paced added p99 (ms)", paced.added_ms["p99"], 50.0, False)
    for case in drains or []:
        if not case.case.startswith("wide"):
            continue
        limit = next((c for c in drains or [] if c.case == f"limit-{case.in_flight}"), None)
        add(f"{case.in_flight} in flight, 1 process / limit", _r(case, limit), 0.8, True)
        add(f"{case.in_flight} in flight, worker RSS (MB)", case.peak_rss_mb, 300.0, False)
    if "ratio" in polling:
        add("polling gmiq / minimal", polling["ratio"], 0.7, True)
        # The latency target is read at a moderate load, as the paced jobs' is: at saturation
        # (the closed loop above) latency is only the connections over the throughput.
        steady = polling["paced"]
        p99 = (steady["gmiq"]["latency_ms"] or {}).get("p99")
        add(f"polling gmiq p99 at {steady['rate_per_s']:,.0f}/s (ms)", p99, 20.0, False)
    return checks


def _r(case: CaseResult, other: CaseResult | None) -> float | None:
    return ratio(case.jobs_per_s, other.jobs_per_s if other else None)


def targets_table(checks: list[dict[str, Any]]) -> str:
    """One line per target."""
    lines = ["targets (issue 6):"]
    for check in checks:
        verdict = {True: "met", False: "NOT met", None: "n/a"}[check["met"]]
        lines.append(
            f"  {check['target']:<40} {_fmt(check['measured'], 2):>9}  goal {check['goal']:g}"
            f"  {verdict}"
        )
    return "\n".join(lines)


def write_json(document: dict[str, Any]) -> Path:
    """Write the results to bench/results/<UTC timestamp>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def case_dicts(cases: list[CaseResult]) -> list[dict[str, Any]]:
    """JSON-ready cases."""
    return [asdict(case) for case in cases]
