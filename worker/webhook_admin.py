"""Operators' side of deliveries, for the API and the CLI: list them (the failed ones are the
dead letters), show one with its attempts, redeliver one or every failure since a time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from api_contracts.webhooks import DeliveryDetailView, DeliveryListView, DeliveryView
from worker import webhook_store
from worker.db import unit_of_work
from worker.views import delivery_attempt_view, delivery_view


def _as_utc(moment: datetime) -> datetime:
    """A time without an offset is taken as UTC (API and CLI alike)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class DeliveryNotFoundError(Exception):
    """No delivery has that id."""


class DeliveryPendingError(Exception):
    """The delivery is still being attempted; there is nothing to redeliver yet."""


@dataclass
class WebhookAdmin:
    """Reads and redeliveries over the webhook tables."""

    sessions: sessionmaker[Session]

    def list_deliveries(
        self, status: str | None, since: datetime | None, limit: int
    ) -> DeliveryListView:
        """Deliveries, newest first."""
        with self.sessions() as session:
            since = None if since is None else _as_utc(since)
            events = webhook_store.list_events(session, status, since, limit)
            return DeliveryListView(data=[delivery_view(event) for event in events])

    def get_delivery(self, event_id: uuid.UUID) -> DeliveryDetailView:
        """One delivery with its attempts."""
        with self.sessions() as session:
            event = webhook_store.get_event(session, event_id)
            if event is None:
                raise DeliveryNotFoundError(str(event_id))
            attempts = webhook_store.list_attempts(session, event_id)
            return DeliveryDetailView(
                **delivery_view(event).model_dump(),
                attempts=[delivery_attempt_view(attempt) for attempt in attempts],
            )

    def redeliver(self, event_id: uuid.UUID) -> DeliveryView:
        """Queue a delivered or failed event again, with a fresh retry schedule."""
        with unit_of_work(self.sessions) as session:
            event = webhook_store.redeliver_event(session, event_id)
            if event is not None:
                return delivery_view(event)
            if webhook_store.get_event(session, event_id) is None:
                raise DeliveryNotFoundError(str(event_id))
            raise DeliveryPendingError(str(event_id))

    def redeliver_failed_since(self, since: datetime) -> list[uuid.UUID]:
        """Queue again every failed event created since `since`."""
        with unit_of_work(self.sessions) as session:
            return webhook_store.redeliver_failed_since(session, _as_utc(since))
