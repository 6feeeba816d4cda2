"""The `gmiq` command: run the API, workers, the simulator, or everything at once."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from worker.settings import Settings, get_settings
from worker.webhook_cli import add_webhook_commands

log = logging.getLogger("gmiq")


# One line per job is ours (`worker.tasks`); httpx's line per request and Celery's line per
# task said the same again, three lines a job at hundreds of jobs a second. Their warnings and
# errors still show, and GMIQ_LOG_LEVEL=DEBUG shows everything.
_CHATTY_LOGGERS = ("httpx2", "httpx", "celery.app.trace")


def _configure_logging(settings: Settings) -> None:
    level = settings.log_level.upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if level == "INFO":  # DEBUG keeps them all
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def _require_services(settings: Settings) -> None:
    missing = [
        name
        for name, value in (
            ("GMIQ_DATABASE_URL", settings.database_url),
            ("GMIQ_REDIS_URL", settings.redis_url),
        )
        if not value
    ]
    if missing:
        raise SystemExit(
            f"gmiq: set {' and '.join(missing)}, or run `gmiq standalone` for embedded servers"
        )


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API."""
    import uvicorn

    from worker import heap
    from worker.service import build_api

    _require_services(settings)
    app = build_api(settings, warm=True)
    heap.settle(settings.gc_gen0_threshold)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0


def _consumed_queues(which: str) -> tuple[str, ...]:
    """The queues a worker reads, in the order it prefers them."""
    from worker.queues import JOB_QUEUES
    from worker.webhooks import WEBHOOK_QUEUE

    # With both, webhooks come last: deliveries take threads only when no LLM job waits, so a
    # queue that never drains starves them; a dedicated `--queues webhooks` worker does not.
    return {
        "all": (*JOB_QUEUES, WEBHOOK_QUEUE),
        "jobs": JOB_QUEUES,
        "webhooks": (WEBHOOK_QUEUE,),
    }[which]


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run a Celery worker: one process; a few threads take messages, and the calls wait on
    one event loop."""
    from celery.signals import worker_ready, worker_shutting_down

    from worker import heap
    from worker.celery_app import create_celery_app
    from worker.job_strategy import DropOffers
    from worker.runtime import build_runtime, install_runtime
    from worker.webhooks import WEBHOOK_QUEUE

    _require_services(settings)
    app = create_celery_app(settings, consumer=True)
    app.steps["consumer"].add(DropOffers)
    concurrency = args.concurrency or settings.worker_concurrency
    runtime = build_runtime(settings, app, concurrency)
    install_runtime(runtime)
    runtime.calls.start()
    runtime.warm(min(settings.db_pool_size, concurrency))
    queues = _consumed_queues(args.queues)
    # Webhook deliveries hold a thread for their POST (up to their own limit, past which they
    # defer). Plain job messages wait in the call loop, not on a thread (`job_strategy`), so
    # a full loop leaves the deliveries their threads; the claim threads run the job task for
    # the messages that take Celery's own path, and size the prefetch.
    threads = min(settings.claim_threads, concurrency)
    if WEBHOOK_QUEUE in queues:
        threads += settings.webhook_concurrency

    def on_ready(**_: Any) -> None:
        # Celery has built its consumer by now: what exists is what lasts.
        heap.settle(settings.gc_gen0_threshold)
        runtime.start_background()
        runtime.announce()

    def on_shutting_down(**_: Any) -> None:
        runtime.begin_shutdown()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={threads}",
                f"--queues={','.join(queues)}",
                f"--hostname=gmiq-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--loglevel={settings.log_level.upper()}",
            ]
        )
    finally:
        runtime.shutdown()
    return 0


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    """Apply database migrations."""
    from worker.migrate import upgrade_database

    if not settings.database_url:
        raise SystemExit("gmiq: set GMIQ_DATABASE_URL")
    upgrade_database(settings.database_url)
    print("database is at the newest revision")
    return 0


def cmd_simulator(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the GMI simulator."""
    from worker.simulator import SimulatorConfig
    from worker.simulator.server import run_simulator

    key = settings.simulator_api_key
    config = SimulatorConfig(
        api_key=key.get_secret_value() if key else None,
        latency_ms=args.latency_ms
        if args.latency_ms is not None
        else settings.simulator_latency_ms,
        fault_rate=args.fault_rate,
        chunk_delay_ms=args.chunk_delay_ms,
    )
    run_simulator(args.host, args.port or settings.simulator_port, config)
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a job from the shell, without the HTTP API, and optionally wait for it."""
    from pydantic import ValidationError

    from api_contracts.jobs import JobSubmitRequest
    from worker.service import build_producer

    _require_services(settings)
    if args.file:
        with open(args.file, "rb") as handle:
            raw: dict[str, Any] = json.load(handle)
    elif args.kind == "chat":
        raw = {"kind": "chat", "request": {"messages": [{"role": "user", "content": args.text}]}}
    else:
        raw = {"kind": "response", "request": {"input": args.text}}
    try:
        submission = JobSubmitRequest.model_validate(raw)
    except ValidationError as exc:
        print(f"gmiq: invalid submission: {exc}", file=sys.stderr)
        return 2
    producer, _, _ = build_producer(settings)
    view, _ = producer.submit(submission)
    if args.wait:
        view = producer.wait(view.id, args.wait)
    print(view.model_dump_json(indent=2))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job's view."""
    from worker.producer import JobNotFoundError
    from worker.service import build_producer

    _require_services(settings)
    producer, _, _ = build_producer(settings)
    try:
        view = producer.get(uuid.UUID(args.job_id))
    except (ValueError, JobNotFoundError):
        print(f"gmiq: no job with id {args.job_id}", file=sys.stderr)
        return 1
    print(view.model_dump_json(indent=2))
    return 0


def cmd_queues(_: argparse.Namespace, settings: Settings) -> int:
    """Print the depth of each queue and the live workers."""
    import redis

    from worker.celery_app import broker_key_prefix
    from worker.queues import queue_depths, redis_client_url

    _require_services(settings)
    client: redis.Redis = redis.Redis.from_url(redis_client_url(settings.redis_url))
    for queue, depth in queue_depths(client, broker_key_prefix(settings)).items():
        print(f"{queue:<14} {depth}")
    workers = list(client.scan_iter(f"{settings.redis_prefix}:worker:*"))
    print(f"{'workers':<14} {len(workers)}")
    return 0


def cmd_standalone(_: argparse.Namespace, settings: Settings) -> int:
    """Everything on one machine, on embedded servers unless URLs are configured."""
    from worker.standalone import run_standalone

    return run_standalone(settings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="gmiq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a worker")
    worker.add_argument("--concurrency", type=int, help="calls in flight per process")
    worker.add_argument(
        "--queues",
        choices=("all", "jobs", "webhooks"),
        default="all",
        help="what to consume (default all; run a `webhooks` worker when jobs never stop coming)",
    )
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    sim = sub.add_parser("simulator", help="serve the GMI simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int)
    sim.add_argument("--latency-ms", type=float)
    sim.add_argument("--fault-rate", type=float, default=0.0)
    sim.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause between streamed SSE frames"
    )
    sim.set_defaults(func=cmd_simulator)

    submit = sub.add_parser("submit", help="submit a job")
    submit.add_argument("text", nargs="?", default="Say hello.")
    submit.add_argument("--kind", choices=["chat", "response"], default="chat")
    submit.add_argument("--file", help="a JSON file with the whole submission")
    submit.add_argument("--wait", type=float, help="seconds to wait for the job to end")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.set_defaults(func=cmd_status)

    sub.add_parser("queues", help="show queue depths").set_defaults(func=cmd_queues)
    sub.add_parser("standalone", help="run everything locally").set_defaults(func=cmd_standalone)
    add_webhook_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gmiq` command."""
    args = build_parser().parse_args(argv)
    settings = get_settings()
    _configure_logging(settings)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
