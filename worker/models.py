"""SQLAlchemy 2.x typed tables: job, attempt, tool_call, usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base; `Base.metadata` is what Alembic compares against."""


def _ts(nullable: bool = True) -> Mapped[Any]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class Job(Base):
    """One LLM call a caller handed us, and where it stands."""

    __tablename__ = "job"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(String(8), server_default="normal")
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    output_text: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempt_count: Mapped[int] = mapped_column(Integer, server_default="0")
    lost_count: Mapped[int] = mapped_column(Integer, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(server_default=text("false"))
    worker_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    # When a queued or retrying job is (re)published by the dispatcher.
    next_attempt_at: Mapped[datetime | None] = _ts()
    # A running job whose lease runs out has lost its worker.
    lease_expires_at: Mapped[datetime | None] = _ts()
    # The caller's per-job timeouts (`JobTimeouts`), None for the deployment's defaults.
    timeouts: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Submission time plus `timeouts.total_s`: past it the job fails `deadline_exceeded`.
    deadline_at: Mapped[datetime | None] = _ts()
    # The job a follow-up continues (its history is already expanded into `request`). No
    # foreign key: a message from a Redis-only producer may name it before, or after, that row
    # exists here, and deleting a parent must not touch its follow-ups.
    parent_job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))

    __table_args__ = (
        CheckConstraint("kind IN ('chat', 'response')", name="job_kind_valid"),
        CheckConstraint(
            "status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')",
            name="job_status_valid",
        ),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="job_priority_valid"),
        # Listing, newest first, optionally by status: keyset pagination on (created_at, id).
        Index("ix_job_created_at_id", "created_at", "id"),
        Index("ix_job_status_created_at_id", "status", "created_at", "id"),
        Index(
            "ux_job_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ix_job_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'retrying')"),
        ),
        Index(
            "ix_job_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "ix_job_deadline",
            "deadline_at",
            postgresql_where=text(
                "deadline_at IS NOT NULL AND status IN ('queued', 'retrying', 'running')"
            ),
        ),
    )


class Attempt(Base):
    """One call to the upstream for a job (or one lost to a dead worker)."""

    __tablename__ = "attempt"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("job.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = _ts()
    # succeeded | failed | retry | lost | running
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    delay_s: Mapped[float | None] = mapped_column()
    delay_reason: Mapped[str | None] = mapped_column(Text)
    # Streamed attempts: seconds from sending the request to the first delta. Output tokens per
    # second over the decode (first delta to end), or over the whole call when not streamed.
    time_to_first_token_s: Mapped[float | None] = mapped_column()
    tokens_per_s: Mapped[float | None] = mapped_column()

    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempt_job_number"),)


class ToolCall(Base):
    """One tool call the model asked for, in the order it gave them."""

    __tablename__ = "tool_call"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("job.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    call_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    # The parsed arguments when the model sent valid JSON, else NULL and `arguments_raw` holds it.
    arguments: Mapped[Any | None] = mapped_column(JSONB)
    arguments_raw: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_tool_call_job_position"),)


class Usage(Base):
    """Token usage of a job's successful call; the primary key makes it once per job."""

    __tablename__ = "usage"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("job.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    total_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
