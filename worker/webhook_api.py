"""Webhook routes for operators: list deliveries (`?status=failed` is the dead-letter list),
show one with its attempts, redeliver one, or redeliver every failure since a time."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api_contracts.webhooks import (
    DeliveryDetailView,
    DeliveryListView,
    DeliveryStatus,
    DeliveryView,
    RedeliveryView,
)
from worker.api import error_response
from worker.webhook_admin import DeliveryNotFoundError, DeliveryPendingError, WebhookAdmin


def _not_found(delivery_id: str) -> Any:
    return error_response(404, "not_found", f"no delivery with id {delivery_id}")


def build_webhook_router(admin: WebhookAdmin) -> APIRouter:
    """The `/v1/webhooks` routes over the admin use case."""
    router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

    @router.get("/deliveries", response_model=DeliveryListView)
    def list_deliveries(
        status: DeliveryStatus | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Any:
        """Deliveries, newest first; `status=failed` lists the dead letters. A status not in
        `DeliveryStatus` is a 422 naming `status`, from the API's validation handler."""
        return admin.list_deliveries(status, since, limit)

    @router.get("/deliveries/{delivery_id}", response_model=DeliveryDetailView)
    def get_delivery(delivery_id: str) -> Any:
        """One delivery with every attempt."""
        try:
            return admin.get_delivery(uuid.UUID(delivery_id))
        except (ValueError, DeliveryNotFoundError):
            return _not_found(delivery_id)

    @router.post(
        "/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryView
    )
    def redeliver(delivery_id: str) -> Any:
        """Send a delivered or failed event again, with a fresh retry schedule."""
        try:
            return admin.redeliver(uuid.UUID(delivery_id))
        except (ValueError, DeliveryNotFoundError):
            return _not_found(delivery_id)
        except DeliveryPendingError:
            return error_response(409, "conflict", "the delivery is still being attempted")

    @router.post("/redeliver", status_code=202, response_model=RedeliveryView)
    def redeliver_failed(since: datetime) -> RedeliveryView:
        """Send again every failed event created since `since`."""
        ids = admin.redeliver_failed_since(since)
        return RedeliveryView(count=len(ids), ids=ids)

    return router
