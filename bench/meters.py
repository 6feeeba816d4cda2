"""What a case costs besides time: a process's peak RSS (sampled) and CPU time, and what
Postgres wrote (row inserts and updates from pg_stat_user_tables, relation bytes, WAL bytes)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]
from sqlalchemy import Engine, text


class RssSampler:
    """Samples a process tree's resident memory every `every_s` in a daemon thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._every_s = every_s
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            self._sample()

    def _sample(self) -> None:
        try:
            tree = [self._process, *self._process.children(recursive=True)]
            rss = sum(process.memory_info().rss for process in tree)
        except psutil.Error:
            return
        self.peak_bytes = max(self.peak_bytes, rss)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process used so far (all its threads); 0 if it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


def server_cpu_seconds(name: str) -> float:
    """CPU time of every process with this name (`postgres`, `redis-server`), server-wide:
    live processes plus the exited children they reaped (Postgres backends)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info.get("cpu_times")
        if process.info.get("name") == name and times is not None:
            total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass(frozen=True)
class Writes:
    """Cumulative write counters of the run's database at one moment."""

    inserted: int
    updated: int
    relation_bytes: int
    wal_bytes: int

    def minus(self, before: Writes) -> Writes:
        return Writes(
            self.inserted - before.inserted,
            self.updated - before.updated,
            self.relation_bytes - before.relation_bytes,
            self.wal_bytes - before.wal_bytes,
        )


def read_writes(engine: Engine) -> Writes:
    """Row counters and sizes of every user table; call it when no writer is connected, since
    backends flush their counters when they go idle or exit. WAL is server-wide."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),"
                " coalesce(sum(pg_total_relation_size(relid)), 0),"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
                " FROM pg_stat_user_tables"
            )
        ).one()
    return Writes(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


class CpuMeter:
    """CPU seconds used by named processes, the Postgres and Redis servers (server-wide), this
    process (`client`) and the whole machine since construction; read it while the processes
    still run."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        values["postgres"] = server_cpu_seconds("postgres")
        values["redis"] = server_cpu_seconds("redis-server")
        values["client"] = cpu_seconds(os.getpid())
        busy = psutil.cpu_times()
        values["machine"] = busy.user + busy.nice + busy.system + busy.irq + busy.softirq
        return values

    def seconds(self) -> dict[str, float]:
        """CPU seconds used by each process (and `machine`: the whole machine) so far."""
        now = self._read()
        return {name: now[name] - self._start[name] for name in now}

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        """Milliseconds of CPU per job for each process since construction."""
        used = {name: seconds * 1000 / max(jobs, 1) for name, seconds in self.seconds().items()}
        # What the rest of the machine did meanwhile (other users' tests, the OS): noise.
        ours = sum(value for name, value in used.items() if name != "machine")
        used["others"] = max(0.0, used["machine"] - ours)
        return used
