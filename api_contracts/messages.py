"""The message a producer puts on Redis: enough to create the job if no row exists yet."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api_contracts.jobs import JobKind, JobTimeouts, Priority

# The Celery task that consumes these messages; producers without Python send it by name.
RUN_JOB_TASK = "gmiq.run_job"


class JobMessage(BaseModel):
    """Version 1 of the job message; new fields must be optional so old producers keep working."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    job_id: UUID
    kind: JobKind
    request: dict[str, Any]
    model: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    idempotency_key: str | None = None
    callback_url: str | None = None
    submitted_at: datetime | None = None
    # `timeouts.total_s` counts from `submitted_at` (from when the worker sees it if absent).
    timeouts: JobTimeouts | None = None
    # A follow-up's parent; its history is already expanded into `request`.
    parent_job_id: UUID | None = None
