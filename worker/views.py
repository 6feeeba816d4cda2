"""Turn rows into the contract's job view (pure mapping).

The job view is built from rows by column name (`repository.JobRecord`: what Postgres'
`row_to_json` gives, or a row `insert_job` returned), so the API, the events stream and the
webhook bodies all map a job the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api_contracts.jobs import (
    AttemptView,
    ErrorInfo,
    JobTimeouts,
    JobView,
    ToolCallView,
    UsageView,
)
from api_contracts.webhooks import DeliveryAttemptView, DeliveryView
from worker.webhook_models import WebhookAttempt, WebhookEvent

Row = Mapping[str, Any]


def delivery_view(event: WebhookEvent) -> DeliveryView:
    """A webhook event and how its delivery stands."""
    return DeliveryView.model_validate(event, from_attributes=True)


def delivery_attempt_view(attempt: WebhookAttempt) -> DeliveryAttemptView:
    """One POST of a webhook event."""
    return DeliveryAttemptView.model_validate(attempt, from_attributes=True)


def tool_call_view(call: Row) -> ToolCallView:
    """A stored tool call as callers see it; raw text stands in for arguments that were not JSON."""
    raw = call["arguments_raw"]
    return ToolCallView(
        call_id=call["call_id"],
        name=call["name"],
        type=call["type"],
        arguments=call["arguments"] if raw is None else raw,
        arguments_raw=raw,
    )


def job_view(
    job: Row,
    tool_calls: Sequence[Row] = (),
    usage: Row | None = None,
    attempts: Sequence[Row] = (),
    deliveries: Sequence[Row] = (),
) -> JobView:
    """The full view of one job; a job just inserted has no children."""
    status = job["status"]
    error = job["error"]
    return JobView(
        id=job["id"],
        kind=job["kind"],
        status=status,
        model=job["model"],
        priority=job["priority"],
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        attempt_count=job["attempt_count"],
        next_attempt_at=job["next_attempt_at"] if status == "retrying" else None,
        attempts=[AttemptView.model_validate(attempt) for attempt in attempts],
        output_text=job["output_text"],
        tool_calls=[tool_call_view(call) for call in tool_calls],
        usage=UsageView.model_validate(usage) if usage is not None else None,
        result=job["result"],
        error=ErrorInfo.model_validate(error) if error else None,
        metadata=job["metadata"] or {},
        idempotency_key=job["idempotency_key"],
        callback_url=job["callback_url"],
        cancel_requested=job["cancel_requested"],
        deliveries=[DeliveryView.model_validate(event) for event in deliveries],
        request=job["request"],
        timeouts=JobTimeouts.model_validate(job["timeouts"]) if job["timeouts"] else None,
        deadline_at=job["deadline_at"],
        parent_job_id=job["parent_job_id"],
    )
