"""Webhook event bodies, the delivery views operators and pollers see, and the secret format."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

EventType = Literal["job.succeeded", "job.failed", "job.cancelled"]
# pending: waiting for its next attempt; delivered: a 2xx came back; failed: the dead letters.
DeliveryStatus = Literal["pending", "delivered", "failed"]
AttemptOutcome = Literal["running", "delivered", "retry", "failed", "lost"]

SECRET_PREFIX = "whsec_"
# Standard Webhooks recommends secrets of 24 to 64 random bytes.
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64


def decode_webhook_secret(value: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret; ValueError (never quoting it) if malformed."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from None
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(f"must encode {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes")
    return key


class JobEvent(BaseModel):
    """The body gmiq POSTs to a job's `callback_url` when the job ends. `data` is the job view,
    or only `{"id", "status"}` when the operator chose thin events."""

    type: EventType
    timestamp: datetime
    data: dict[str, Any]


class DeliveryView(BaseModel):
    """One event for one job and how its delivery stands."""

    id: UUID
    job_id: UUID
    type: EventType
    url: str
    status: DeliveryStatus
    attempt_count: int
    last_status_code: int | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    failure_reason: str | None


class DeliveryAttemptView(BaseModel):
    """One POST to the receiver: when, what came back, how long it took."""

    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    status_code: int | None
    latency_ms: float | None
    # The first bytes of the receiver's answer (1 KiB by default), as text.
    response_excerpt: str | None
    error: str | None


class DeliveryDetailView(DeliveryView):
    """A delivery with every attempt, oldest first."""

    attempts: list[DeliveryAttemptView]


class DeliveryListView(BaseModel):
    """Deliveries, newest first."""

    data: list[DeliveryView]


class RedeliveryView(BaseModel):
    """How many deliveries were queued again, and which."""

    count: int
    ids: list[UUID]
