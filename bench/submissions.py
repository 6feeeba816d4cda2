"""The API's cost per submission alone: `POST /v1/jobs` from `--concurrency` connections to a
`gmiq api` with no worker (the jobs stay queued), in rounds, on the run's own database and
Redis prefix. Prints each round's requests/s and the API process' CPU per request (user and
system). For A/B runs of the submission path: run it on each tree, or with a `GMIQ_*` setting
exported (it reaches the API).

    .venv/bin/python -m bench.submissions --requests 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import psutil  # type: ignore[import-untyped]

from bench.pipeline import submit_via_api
from bench.processes import start_api
from bench.run import LOCAL_POSTGRES, LOCAL_REDIS
from bench.stack import Stack


def main(argv: Sequence[str] | None = None) -> None:
    """Rounds of submissions to a fresh `gmiq api`; everything it made is removed after."""
    parser = argparse.ArgumentParser(prog="python -m bench.submissions")
    parser.add_argument("--requests", type=int, default=4000, help="POSTs per round")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=LOCAL_POSTGRES, help="admin URL (loopback only)")
    parser.add_argument("--redis", default=LOCAL_REDIS, help="Redis URL (loopback only)")
    args = parser.parse_args(argv)
    stack = Stack(args.postgres, args.redis)
    try:
        stack.open()
        api, url = start_api(stack, stack.env())
        process = psutil.Process(api.pid)
        submit_via_api(url, "warm-up", 500, args.concurrency, 120)
        for number in range(1, args.rounds + 1):
            before = process.cpu_times()
            started = time.monotonic()
            traffic = submit_via_api(url, f"round-{number}", args.requests, args.concurrency, 600)
            elapsed = time.monotonic() - started
            after = process.cpu_times()
            user = (after.user - before.user) * 1000 / args.requests
            system = (after.system - before.system) * 1000 / args.requests
            failed = args.requests - traffic.ok
            print(
                f"round {number}: {traffic.ok / elapsed:,.0f} req/s, API CPU "
                f"{user + system:.2f} ms/request (user {user:.2f}, system {system:.2f}), "
                f"{failed} failed",
                flush=True,
            )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
