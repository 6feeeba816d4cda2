"""The polling benchmark: `GET /v1/jobs/{id}` on gmiq's API against a minimal Starlette handler
doing the same primary-key SELECT, with the same table, ids, client and concurrency: first as
fast as each serves (closed loop, the throughput), then both at the same fixed rate, half what
the minimal handler served unless `--poll-rate` says (open loop, the latency at a moderate load;
at saturation latency is only concurrency over throughput)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from bench.meters import cpu_seconds
from bench.processes import start_polled_apis
from bench.report import percentiles
from bench.stack import Stack
from bench.traffic import TrafficResult, run_traffic

_WARMUP_REQUESTS = 300
_ROUNDS = 4
_PACED_ROUNDS = 2
_SAMPLE_IDS = 2000


def fill_jobs(engine: Engine, rows: int) -> int:
    """Copy a finished job until the table holds `rows` jobs; returns how many it holds."""
    with engine.begin() as connection:
        count = int(connection.execute(text("SELECT count(*) FROM job")).scalar_one())
        missing = rows - count
        if missing > 0:
            connection.execute(
                text(
                    "INSERT INTO job (id, kind, status, model, priority, request, metadata,"
                    " output_text, result, attempt_count, created_at, updated_at, started_at,"
                    " finished_at)"
                    " SELECT gen_random_uuid(), kind, status, model, priority, request, metadata,"
                    " output_text, result, attempt_count, created_at, updated_at, started_at,"
                    " finished_at FROM (SELECT * FROM job WHERE status = 'succeeded' LIMIT 1) AS j,"
                    " generate_series(1, :missing)"
                ),
                {"missing": missing},
            )
        held = int(connection.execute(text("SELECT count(*) FROM job")).scalar_one())
    # A table in service was written long ago: its rows' hint bits are set, its visibility map
    # is up to date and its WAL is checkpointed. Rows just inserted would have the first reads
    # write all that back (and autovacuum and a checkpoint start mid-measurement), so settle
    # them first, for both servers alike.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE) job"))
        connection.execute(text("CHECKPOINT"))
    return held


def sample_ids(engine: Engine, count: int) -> list[str]:
    """Ids of jobs that ran (they have usage rows, so the view loads its children)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT job_id FROM usage ORDER BY random() LIMIT :n"), {"n": count}
        ).all()
    return [str(row[0]) for row in rows]


def _poll(
    url: str,
    ids: list[str],
    requests: int,
    concurrency: int,
    deadline_s: float,
    client: str,
    rate_per_s: float | None = None,
) -> TrafficResult:
    chooser = random.Random(6)
    picks = [chooser.choice(ids) for _ in range(requests)]

    def plan(index: int) -> tuple[str, str, bytes | None]:
        return "GET", f"{url}/v1/jobs/{picks[index]}", None

    return run_traffic(plan, requests, concurrency, {}, deadline_s, rate_per_s, client)


def measure_polling(
    stack: Stack,
    rows: int,
    requests: int,
    concurrency: int,
    deadline_s: float,
    client: str,
    rate_per_s: float | None = None,
) -> dict[str, Any]:
    """Requests per second of each server and gmiq's ratio to the minimal one; then the latency
    of each at the same fixed rate (`rate_per_s`, default half the minimal one's throughput)."""
    engine = stack.monitor()
    ids = sample_ids(engine, _SAMPLE_IDS)
    if not ids:
        return {"skipped": "no job ran in this run, so there is nothing to poll"}
    held = fill_jobs(engine, rows)
    stack.release_monitor()
    result: dict[str, Any] = {"rows": held, "requests": requests, "concurrency": concurrency}
    servers = start_polled_apis(stack, stack.env())
    totals = {name: _Totals() for name in servers}
    paced = {name: _Totals() for name in servers}
    try:
        for _, url in servers.values():
            _poll(url, ids, _WARMUP_REQUESTS, concurrency, deadline_s, client)
        # Alternate the servers in rounds, so a change in the machine's load hits both alike.
        for _ in range(_ROUNDS):
            for name, (child, url) in servers.items():
                cpu_before = cpu_seconds(child.pid)
                traffic = _poll(url, ids, requests // _ROUNDS, concurrency, deadline_s, client)
                totals[name].add(traffic, cpu_seconds(child.pid) - cpu_before)
        rate = rate_per_s or max(1.0, round(totals["minimal"].requests_per_s / 2))
        for _ in range(_PACED_ROUNDS):
            for name, (child, url) in servers.items():
                cpu_before = cpu_seconds(child.pid)
                traffic = _poll(
                    url, ids, requests // _PACED_ROUNDS, concurrency, deadline_s, client, rate
                )
                paced[name].add(traffic, cpu_seconds(child.pid) - cpu_before)
    finally:
        stack.stop(*(child for child, _ in servers.values()))
    for name, total in totals.items():
        result[name] = total.summary()
    result["ratio"] = result["gmiq"]["requests_per_s"] / max(
        result["minimal"]["requests_per_s"], 1e-9
    )
    result["paced"] = {"rate_per_s": rate, **{name: t.summary() for name, t in paced.items()}}
    return result


@dataclass
class _Totals:
    """One server's requests over all rounds."""

    ok: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def add(self, traffic: TrafficResult, cpu_s: float) -> None:
        self.ok += traffic.ok
        self.failed += sum(traffic.errors.values()) + sum(
            n for status, n in traffic.statuses.items() if status != 200
        )
        self.elapsed_s += traffic.elapsed_s
        self.cpu_s += cpu_s
        self.latencies_s += traffic.latencies_s

    @property
    def requests_per_s(self) -> float:
        return self.ok / max(self.elapsed_s, 1e-9)

    def summary(self) -> dict[str, Any]:
        return {
            "requests_per_s": self.requests_per_s,
            "latency_ms": percentiles([s * 1000 for s in self.latencies_s]),
            "server_cpu_ms_per_request": self.cpu_s * 1000 / max(self.ok + self.failed, 1),
            "errors": self.failed,
        }
