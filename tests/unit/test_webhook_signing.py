"""Signing per Standard Webhooks, checked against the reference implementation; secrets and
event bodies."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from api_contracts.webhooks import decode_webhook_secret
from worker.webhooks import (
    build_event_body,
    parse_secrets,
    sign,
    signed_headers,
)

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
BODY = '{"type":"job.succeeded","data":{"id":"x"}}'


def test_signature_matches_the_reference_implementation() -> None:
    timestamp = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    ours = sign([decode_webhook_secret(OLD)], "msg_1", int(timestamp.timestamp()), BODY)
    assert ours == Webhook(OLD).sign("msg_1", timestamp, BODY)


def test_every_active_secret_signs_so_either_verifies_during_rotation() -> None:
    now = datetime.now(UTC)
    headers = signed_headers(parse_secrets(f"{NEW}, {OLD}"), "evt-1", now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    for secret in (OLD, NEW):
        assert Webhook(secret).verify(BODY, headers) == orjson.loads(BODY)
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_a_changed_body_or_id_does_not_verify() -> None:
    headers = signed_headers(parse_secrets(OLD), "evt-1", datetime.now(UTC), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(BODY.replace("x", "y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(BODY, {**headers, "webhook-id": "evt-2"})


@pytest.mark.parametrize(
    "secret",
    [
        "not-prefixed",
        "whsec_!!!notbase64",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
    ],
)
def test_malformed_secrets_are_refused_without_quoting_them(secret: str) -> None:
    with pytest.raises(ValueError, match="must") as caught:
        decode_webhook_secret(secret)
    assert secret not in str(caught.value)
    with pytest.raises(ValueError, match="webhook secret 2") as listed:
        parse_secrets(f"{OLD},{secret}")
    assert secret not in str(listed.value)


def test_empty_secret_entries_are_skipped() -> None:
    assert parse_secrets("") == []
    assert parse_secrets(f" {OLD} ,,") == [b"o" * 32]


def test_event_body_carries_the_view_or_only_id_and_status_when_thin() -> None:
    job = {"id": "j1", "status": "failed", "error": {"type": "x"}}
    occurred = datetime(2026, 11, 25, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    full = orjson.loads(build_event_body("job.failed", occurred, job, thin=False))
    assert full == {"type": "job.failed", "timestamp": "2026-11-25T12:00:00Z", "data": job}
    thin = orjson.loads(build_event_body("job.failed", occurred, job, thin=True))
    assert thin["data"] == {"id": "j1", "status": "failed"}


def test_the_receiver_in_the_docs_verifies_our_events() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    secret = re.search(r'Webhook\("(whsec_[^"]+)"\)', docs)
    assert secret is not None
    headers = signed_headers(parse_secrets(secret.group(1)), "evt-1", datetime.now(UTC), BODY)
    assert Webhook(secret.group(1)).verify(BODY.encode(), headers)["type"] == "job.succeeded"
