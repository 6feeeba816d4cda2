"""The server-sent events of `GET /v1/jobs/{id}/events`: what a follower of a job sees.

Each SSE event has `id:` (resume with `Last-Event-ID`), `event:` (a name below) and `data:` (JSON):

- `state`: `JobStateEvent`, the job started an attempt or left one (running, retrying, or ended).
- `text.delta`, `reasoning.delta`: `TextDeltaEvent`, a piece of the answer as the model streams it.
- `tool_call.started`: `ToolCallStartedEvent`; `tool_call.delta`: `ToolCallDeltaEvent`, a piece
  of its arguments.
- `job`: the final `JobView`, as stored; it is the last event of every stream.

Deltas carry their attempt: when an attempt breaks and the job is retried, the next attempt
starts its text over, and only the final view says what was stored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api_contracts.jobs import ErrorInfo, JobStatus

JobEventName = Literal[
    "state", "text.delta", "reasoning.delta", "tool_call.started", "tool_call.delta", "job"
]
# The event that ends every follower's stream; its data is the job view.
FINAL_EVENT: JobEventName = "job"


class JobStateEvent(BaseModel):
    """The job entered `status` as `attempt` started or ended."""

    status: JobStatus
    attempt: int
    error: ErrorInfo | None = None


class TextDeltaEvent(BaseModel):
    """A piece of text; `index` is the chat choice or the Responses output item."""

    attempt: int
    index: int
    delta: str


class ToolCallStartedEvent(BaseModel):
    """The model began a tool call; `call_index` places it within its chat choice."""

    attempt: int
    index: int
    call_index: int
    call_id: str | None
    name: str | None
    type: str


class ToolCallDeltaEvent(BaseModel):
    """A piece of a tool call's arguments (a JSON string once joined)."""

    attempt: int
    index: int
    call_index: int
    delta: str
