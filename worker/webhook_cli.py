"""`gmiq webhooks`: list failed deliveries (the dead letters) and redeliver them."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.webhook_admin import WebhookAdmin


@contextmanager
def _admin(settings: Settings) -> Iterator[WebhookAdmin]:
    from worker.db import make_engine, make_sessionmaker
    from worker.webhook_admin import WebhookAdmin

    if not settings.database_url:
        raise SystemExit("gmiq: set GMIQ_DATABASE_URL")
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        yield WebhookAdmin(make_sessionmaker(engine))
    finally:
        engine.dispose()


def _since(value: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC (see `WebhookAdmin`)."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None


def cmd_failed(args: argparse.Namespace, settings: Settings) -> int:
    """Print failed deliveries, newest first, one a line."""
    with _admin(settings) as admin:
        page = admin.list_deliveries("failed", args.since, args.limit)
    print(f"{'id':<36}  {'job':<36}  {'type':<13}  attempts  last  reason")
    for d in page.data:
        last = d.last_status_code if d.last_status_code is not None else "-"
        print(
            f"{d.id}  {d.job_id}  {d.type:<13}  {d.attempt_count:>8}  {last!s:>4}  "
            f"{d.failure_reason or ''}"
        )
    return 0


def cmd_redeliver(args: argparse.Namespace, settings: Settings) -> int:
    """Queue one delivery again, or every failed one since a time."""
    from worker.webhook_admin import DeliveryNotFoundError, DeliveryPendingError

    if args.since is not None:
        with _admin(settings) as admin:
            ids = admin.redeliver_failed_since(args.since)
        print(f"queued {len(ids)} deliveries again")
        return 0
    if args.delivery_id is None:
        print("gmiq: give a delivery id or --since", file=sys.stderr)
        return 2
    try:
        with _admin(settings) as admin:
            view = admin.redeliver(uuid.UUID(args.delivery_id))
    except (ValueError, DeliveryNotFoundError):
        print(f"gmiq: no delivery with id {args.delivery_id}", file=sys.stderr)
        return 1
    except DeliveryPendingError:
        print(f"gmiq: delivery {args.delivery_id} is still being attempted", file=sys.stderr)
        return 1
    print(f"queued delivery {view.id} again")
    return 0


def add_webhook_commands(sub: Any) -> None:
    """Add `webhooks failed` and `webhooks redeliver` to the `gmiq` parser."""
    webhooks = sub.add_parser("webhooks", help="failed webhook deliveries, and redelivery")
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    failed = commands.add_parser("failed", help="list failed deliveries, newest first")
    failed.add_argument("--since", type=_since, help="only those created since (ISO 8601)")
    failed.add_argument("--limit", type=int, default=100)
    failed.set_defaults(func=cmd_failed)
    redeliver = commands.add_parser("redeliver", help="send a delivery (or all failed) again")
    redeliver.add_argument("delivery_id", nargs="?")
    redeliver.add_argument("--since", type=_since, help="every failed one created since")
    redeliver.set_defaults(func=cmd_redeliver)
