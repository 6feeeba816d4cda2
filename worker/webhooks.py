"""Webhook decisions, all pure: an event's body, its Standard Webhooks signature, and what to
do after each delivery attempt. Time and secrets are passed in."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from api_contracts.webhooks import JobEvent, decode_webhook_secret

# The Celery queue and task of deliveries; a queue of their own so LLM jobs never wait on them.
WEBHOOK_QUEUE = "gmiq.webhooks"
DELIVER_WEBHOOK_TASK = "gmiq.deliver_webhook"
GONE = 410


def parse_secrets(raw: str) -> list[bytes]:
    """Keys of a comma-separated `whsec_` list; the error names the entry, never its value."""
    keys: list[bytes] = []
    for position, entry in enumerate(raw.split(","), start=1):
        if not entry.strip():
            continue
        try:
            keys.append(decode_webhook_secret(entry.strip()))
        except ValueError as exc:
            raise ValueError(f"webhook secret {position}: {exc}") from None
    return keys


def build_event_body(
    event_type: str, occurred_at: datetime, job: dict[str, Any], thin: bool
) -> str:
    """The JSON body (`event_type` must be one of the contract's); thin events carry only the
    job's id and status."""
    data = {"id": job["id"], "status": job["status"]} if thin else job
    event = JobEvent.model_validate(
        {"type": event_type, "timestamp": occurred_at.astimezone(UTC), "data": data}
    )
    return orjson.dumps(event.model_dump(mode="json")).decode()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def signed_headers(keys: Sequence[bytes], msg_id: str, now: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (the id stays, the timestamp is this one's)."""
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }


Verdict = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class DeliveryDecision:
    """What to do after one attempt, and why."""

    verdict: Verdict
    delay_s: float = 0.0
    reason: str = ""


def decide_after_attempt(
    attempt_in_round: int,
    schedule_s: Sequence[float],
    status_code: int | None,
    retry_after_s: float | None,
    refused: str | None = None,
) -> DeliveryDecision:
    """2xx delivers; 410 Gone or a refused address fails at once; anything else waits the next
    scheduled delay (longer if the receiver's Retry-After asks, up to the longest scheduled
    delay), until the schedule runs out. `attempt_in_round` counts from 1 since the event was
    created or last redelivered."""
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryDecision("delivered")
    if status_code == GONE:
        return DeliveryDecision("failed", reason="the receiver answered 410 Gone")
    if refused is not None:
        return DeliveryDecision("failed", reason=refused)
    if attempt_in_round >= len(schedule_s):
        return DeliveryDecision("failed", reason=f"gave up after {attempt_in_round} attempts")
    delay = schedule_s[attempt_in_round]
    if retry_after_s is not None and retry_after_s > delay:
        asked = min(retry_after_s, max(schedule_s))
        if asked > delay:
            return DeliveryDecision("retry", asked, f"retry-after {asked:g}s")
    return DeliveryDecision("retry", delay, f"schedule attempt {attempt_in_round + 1}")
