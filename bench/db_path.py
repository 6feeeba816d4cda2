"""The worker's database path per job, against the floor of raw SQL doing the same writes.

`python -m bench.db_path [--jobs N] [--database-url URL]` makes a scratch database on the local
Postgres, inserts N jobs, and times, on one thread, what a worker does per job in Postgres:
claim it (job update + attempt row) and record its success (job, attempt with timing, usage,
one tool call, a webhook event for half of them). gmiq goes through `worker.repository`; the
floor runs the same statements as hand-written SQL on a bare psycopg connection, two
transactions per job, no SQLAlchemy. It prints CPU and wall time per job for both and their
ratio; the scratch database is dropped afterwards."""

from __future__ import annotations

import argparse
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from worker import repository
from worker.db import make_engine, make_sessionmaker, unit_of_work
from worker.migrate import upgrade_database
from worker.payloads import ParsedResult, ParsedToolCall, ParsedUsage

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
PARSED = ParsedResult(
    "hello",
    [ParsedToolCall("call_1", "get_weather", "function", {"city": "Paris"}, None)],
    ParsedUsage(12, 5, 17, 2, 1, "openai/gpt-5.4-mini"),
)

_FLOOR_CLAIM = """
WITH claimed AS (
    UPDATE job SET status = 'running', attempt_count = attempt_count + 1,
        started_at = coalesce(started_at, now()), updated_at = now(), next_attempt_at = NULL,
        lease_expires_at = now() + interval '60 seconds', worker_id = %(w)s
    WHERE id = %(id)s AND status IN ('queued', 'retrying') AND NOT cancel_requested
    RETURNING id, kind, model, request, attempt_count
), opened AS (
    INSERT INTO attempt (job_id, number, worker_id, started_at, outcome)
    SELECT id, attempt_count, %(w)s, now(), 'running' FROM claimed
)
SELECT * FROM claimed
"""
_FLOOR_RECORD = """
WITH done AS (
    UPDATE job SET status = 'succeeded', finished_at = now(), updated_at = now(),
        lease_expires_at = NULL, result = %(result)s, output_text = %(text)s, error = NULL
    WHERE id = %(id)s AND status = 'running' AND worker_id = %(w)s AND attempt_count = %(n)s
    RETURNING id, callback_url
), closed AS (
    UPDATE attempt SET outcome = 'succeeded', finished_at = now(), status_code = 200,
        tokens_per_s = 10.0
    WHERE job_id IN (SELECT id FROM done) AND number = %(n)s
), counted AS (
    INSERT INTO usage (job_id, model, input_tokens, output_tokens, total_tokens, cached_tokens,
        reasoning_tokens)
    SELECT id, 'openai/gpt-5.4-mini', 12, 5, 17, 2, 1 FROM done ON CONFLICT DO NOTHING
), announced AS (
    INSERT INTO webhook_event (id, job_id, type, url, next_attempt_at)
    SELECT %(event)s, id, 'job.succeeded', callback_url, now() FROM done
    WHERE callback_url IS NOT NULL ON CONFLICT DO NOTHING
)
SELECT count(*) FROM done
"""
_FLOOR_TOOL_CALL = """
INSERT INTO tool_call (job_id, position, call_id, type, name, arguments, arguments_raw)
VALUES (%(id)s, 0, 'call_1', 'function', 'get_weather', %(args)s, NULL) ON CONFLICT DO NOTHING
"""


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new, migrated database on the server of `admin_url`, dropped on exit."""
    name = f"gmiq_bench_dbpath_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def insert_jobs(url: str, count: int) -> list[uuid.UUID]:
    """`count` queued jobs, half of them with a callback URL."""
    sessions = make_sessionmaker(make_engine(url, pool_size=1))
    ids = [uuid.uuid4() for _ in range(count)]
    with unit_of_work(sessions) as session:
        for n, job_id in enumerate(ids):
            callback = "https://hooks.example.com/gmiq" if n % 2 else None
            new = repository.NewJob(
                job_id,
                "chat",
                "openai/gpt-5.4-mini",
                "normal",
                {"messages": []},
                {},
                None,
                callback,
            )
            repository.insert_job(session, new, 600)
    return ids


def gmiq_path(url: str) -> Callable[[uuid.UUID], None]:
    """One job through `worker.repository`, as `JobRunner` runs it."""
    sessions = make_sessionmaker(make_engine(url, pool_size=1))

    def run(job_id: uuid.UUID) -> None:
        with unit_of_work(sessions) as session:
            claim = repository.claim_job(session, job_id, "bench", 60)
        assert claim is not None
        with unit_of_work(sessions) as session:
            stored = repository.record_success(
                session, claim, "bench", 200, RESULT, PARSED, None, 10.0
            )
        assert stored

    return run


def floor_path(url: str) -> Callable[[uuid.UUID], None]:
    """The same writes as hand-written SQL on one bare psycopg connection."""
    connection = psycopg.connect(url)

    def run(job_id: uuid.UUID) -> None:
        with connection.transaction():
            row = connection.execute(_FLOOR_CLAIM, {"id": job_id, "w": "bench"}).fetchone()
        assert row is not None
        params = {
            "id": job_id,
            "w": "bench",
            "n": row[4],
            "result": Jsonb(RESULT),
            "text": "hello",
            "event": uuid.uuid4(),
        }
        with connection.transaction():
            done = connection.execute(_FLOOR_RECORD, params).fetchone()
            assert done is not None
            assert done[0] == 1
            connection.execute(_FLOOR_TOOL_CALL, {"id": job_id, "args": Jsonb({"city": "Paris"})})

    return run


def measure(run: Callable[[uuid.UUID], None], ids: list[uuid.UUID]) -> tuple[float, float]:
    """CPU and wall milliseconds per job."""
    wall, cpu = time.perf_counter(), time.process_time()
    for job_id in ids:
        run(job_id)
    count = len(ids)
    return (time.process_time() - cpu) * 1000 / count, (time.perf_counter() - wall) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--database-url", default=LOCAL, help="an admin URL on the server to use")
    args = parser.parse_args()
    with scratch_database(args.database_url) as url:
        # Interleaved halves, so a burst of load elsewhere on the machine hits both alike.
        ids = insert_jobs(url, args.jobs * 2)
        gmiq, floor = gmiq_path(url), floor_path(url)
        gmiq(ids.pop())  # warm both: first statements compile and prepare
        floor(ids.pop())
        results: dict[str, list[tuple[float, float]]] = {"gmiq": [], "floor": []}
        chunk = max(1, len(ids) // 20)
        for start in range(0, len(ids) - chunk + 1, 2 * chunk):
            results["gmiq"].append(measure(gmiq, ids[start : start + chunk]))
            results["floor"].append(measure(floor, ids[start + chunk : start + 2 * chunk]))
    cpu = {name: sum(c for c, _ in rows) / len(rows) for name, rows in results.items()}
    wall = {name: sum(w for _, w in rows) / len(rows) for name, rows in results.items()}
    print("database path per job (claim + record success), one thread:")
    for name in ("floor", "gmiq"):
        print(f"  {name:5}  {cpu[name]:.2f} ms CPU  {wall[name]:.2f} ms wall")
    print(
        f"  gmiq / floor: {cpu['gmiq'] / cpu['floor']:.2f}x CPU, "
        f"{wall['gmiq'] / wall['floor']:.2f}x wall"
    )


if __name__ == "__main__":
    main()
