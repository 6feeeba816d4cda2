"""The unacknowledged entry a batched read writes for the first message is kombu's own; a
message without what kombu needs to restore it is left to kombu's path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.broker_batches import unacked_entry


def payload(**properties: Any) -> dict[str, Any]:
    return {"body": "e30=", "headers": {"id": "1"}, "properties": properties}


def test_the_entry_is_the_message_its_exchange_and_routing_key_as_kombu_writes_it() -> None:
    message = payload(
        delivery_tag="tag-1",
        delivery_info={"exchange": "gmiq.normal", "routing_key": "gmiq.high"},
    )
    entry = unacked_entry(message)
    assert entry is not None
    tag, unacked = entry
    assert tag == "tag-1"
    assert json.loads(unacked) == [message, "gmiq.normal", "gmiq.high"]


@pytest.mark.parametrize(
    "message",
    [
        {"body": "e30="},
        payload(delivery_info={"exchange": "x", "routing_key": "y"}),
        payload(delivery_tag=7, delivery_info={"exchange": "x", "routing_key": "y"}),
        payload(delivery_tag="t"),
        payload(delivery_tag="t", delivery_info={"exchange": "x"}),
        payload(delivery_tag="t", delivery_info={"exchange": None, "routing_key": "y"}),
    ],
)
def test_a_message_kombu_could_not_restore_gets_no_entry(message: dict[str, Any]) -> None:
    assert unacked_entry(message) is None
