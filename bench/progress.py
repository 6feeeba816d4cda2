"""What Postgres says about a run's jobs: how many ended (polled with a deadline), when the last
one ended, each job's time from submission to stored result, and, for streamed calls, each
call's time to first token."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, text

_TERMINAL = "('succeeded', 'failed', 'cancelled')"
# created_at bounds the scan to the run's rows through ix_job_created_at_id.
_GMIQ_RUN = "created_at >= to_timestamp(:since) AND metadata @> CAST(:tag AS jsonb)"


@dataclass(frozen=True)
class Progress:
    """How many of the run's jobs ended, how many succeeded, and when the last one ended."""

    done: int
    succeeded: int
    last_finished_at: float | None


def _tag(run_tag: str) -> str:
    return orjson.dumps({"bench_run": run_tag}).decode()


def gmiq_progress(engine: Engine, run_tag: str, since: float) -> Progress:
    """The run's jobs in a terminal state."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                f"SELECT count(*) FILTER (WHERE status IN {_TERMINAL}),"
                " count(*) FILTER (WHERE status = 'succeeded'),"
                " extract(epoch FROM max(finished_at))"
                f" FROM job WHERE {_GMIQ_RUN}"
            ),
            {"since": since, "tag": _tag(run_tag)},
        ).one()
    return Progress(int(row[0]), int(row[1]), float(row[2]) if row[2] is not None else None)


def gmiq_durations(engine: Engine, run_tag: str, since: float) -> tuple[list[float], list[float]]:
    """Per ended job: seconds from insert to stored outcome (finished_at - created_at), and
    seconds it waited to be claimed (started_at - created_at)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT extract(epoch FROM finished_at - created_at),"
                " extract(epoch FROM started_at - created_at)"
                f" FROM job WHERE {_GMIQ_RUN} AND finished_at IS NOT NULL"
            ),
            {"since": since, "tag": _tag(run_tag)},
        ).all()
    return [float(row[0]) for row in rows], [float(row[1] or 0) for row in rows]


def gmiq_first_tokens(engine: Engine, run_tag: str, since: float) -> list[float]:
    """Seconds from sending the request to the first streamed delta, per attempt of the run's
    jobs (the worker stores it on the attempt row)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT time_to_first_token_s FROM attempt"
                f" WHERE job_id IN (SELECT id FROM job WHERE {_GMIQ_RUN})"
                " AND time_to_first_token_s IS NOT NULL"
            ),
            {"since": since, "tag": _tag(run_tag)},
        ).all()
    return [float(row[0]) for row in rows]


def naive_progress(engine: Engine, run_tag: str) -> Progress:
    """The naive run's stored answers (it has no failure state: a failed task stores nothing)."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE status_code = 200),"
                " extract(epoch FROM max(finished_at))"
                " FROM bench_naive_result WHERE run = :run"
            ),
            {"run": run_tag},
        ).one()
    return Progress(int(row[0]), int(row[1]), float(row[2]) if row[2] is not None else None)


def naive_durations(engine: Engine, run_tag: str) -> list[float]:
    """Seconds from publish to stored answer of each naive task."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT extract(epoch FROM finished_at) - submitted_at"
                " FROM bench_naive_result WHERE run = :run"
            ),
            {"run": run_tag},
        ).all()
    return [float(row[0]) for row in rows]


def naive_first_tokens(engine: Engine, run_tag: str) -> list[float]:
    """Seconds from sending the request to the first text delta of each streamed naive task."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT first_token_s FROM bench_naive_result"
                " WHERE run = :run AND first_token_s IS NOT NULL"
            ),
            {"run": run_tag},
        ).all()
    return [float(row[0]) for row in rows]


def wait_for_progress(
    read: Callable[[], Progress],
    expected: int,
    deadline_s: float,
    check_alive: Callable[[], None],
    every_s: float = 0.25,
) -> tuple[Progress, bool]:
    """Poll until `expected` jobs ended or the deadline passed; returns the last reading and
    whether it completed. `check_alive` raises if a process the run needs has died."""
    deadline = time.monotonic() + deadline_s
    while True:
        progress = read()
        if progress.done >= expected:
            return progress, True
        if time.monotonic() > deadline:
            return progress, False
        check_alive()
        time.sleep(every_s)
