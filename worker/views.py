"""Turn rows into the contract's job view (pure mapping)."""

from __future__ import annotations

from collections.abc import Sequence

from api_contracts.jobs import AttemptView, ErrorInfo, JobView, ToolCallView, UsageView
from api_contracts.webhooks import DeliveryAttemptView, DeliveryView
from worker.models import Attempt, Job, ToolCall, Usage
from worker.webhook_models import WebhookAttempt, WebhookEvent


def delivery_view(event: WebhookEvent) -> DeliveryView:
    """A webhook event and how its delivery stands."""
    return DeliveryView.model_validate(event, from_attributes=True)


def delivery_attempt_view(attempt: WebhookAttempt) -> DeliveryAttemptView:
    """One POST of a webhook event."""
    return DeliveryAttemptView.model_validate(attempt, from_attributes=True)


def tool_call_view(call: ToolCall) -> ToolCallView:
    """A stored tool call as callers see it; raw text stands in for arguments that were not JSON."""
    return ToolCallView(
        call_id=call.call_id,
        name=call.name,
        type=call.type,
        arguments=call.arguments if call.arguments_raw is None else call.arguments_raw,
        arguments_raw=call.arguments_raw,
    )


def usage_view(usage: Usage) -> UsageView:
    """Stored usage under the contract's names."""
    return UsageView(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        model=usage.model,
    )


def attempt_view(attempt: Attempt) -> AttemptView:
    """One attempt as callers see it."""
    return AttemptView.model_validate(attempt, from_attributes=True)


def job_view(
    job: Job,
    tool_calls: list[ToolCall],
    usage: Usage | None,
    attempts: list[Attempt],
    deliveries: Sequence[WebhookEvent] = (),
) -> JobView:
    """The full view of one job."""
    return JobView(
        id=job.id,
        kind=job.kind,
        status=job.status,
        model=job.model,
        priority=job.priority,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempt_count=job.attempt_count,
        next_attempt_at=job.next_attempt_at if job.status == "retrying" else None,
        attempts=[attempt_view(attempt) for attempt in attempts],
        output_text=job.output_text,
        tool_calls=[tool_call_view(call) for call in tool_calls],
        usage=usage_view(usage) if usage is not None else None,
        result=job.result,
        error=ErrorInfo.model_validate(job.error) if job.error else None,
        metadata=job.meta or {},
        idempotency_key=job.idempotency_key,
        callback_url=job.callback_url,
        cancel_requested=job.cancel_requested,
        deliveries=[delivery_view(event) for event in deliveries],
    )
