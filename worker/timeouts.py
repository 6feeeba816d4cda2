"""Per-job timeouts and the job deadline: what limits a call gets, and when a job is out of time.

Pure functions; the job runner and the repository apply them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True)
class CallLimits:
    """How long one call may take: to connect, between bytes, and in all."""

    connect_s: float
    read_s: float
    total_s: float


def call_limits(
    defaults: CallLimits, timeouts: dict[str, Any] | None, time_left_s: float | None
) -> CallLimits:
    """The job's own limits over the deployment's, the whole call cut to the job's time left.

    A read or connect timeout longer than the whole call could never fire, so they are cut
    too; that way a timeout error names the limit that really ended the call."""
    own = timeouts or {}
    total = float(own.get("call_s") or defaults.total_s)
    if time_left_s is not None:
        total = max(0.0, min(total, time_left_s))
    connect = float(own.get("connect_s") or defaults.connect_s)
    read = float(own.get("read_s") or defaults.read_s)
    return CallLimits(connect_s=min(connect, total), read_s=min(read, total), total_s=total)


def retry_outlives_deadline(delay_s: float, time_left_s: float | None) -> bool:
    """Whether the next attempt would start at or after the job's deadline."""
    return time_left_s is not None and delay_s >= time_left_s


def deadline_error(total_s: float | None, last_error: dict[str, Any] | None) -> dict[str, Any]:
    """The error of a job that ran out of time, naming its limit and the last failure."""
    limit = f" of {total_s:g} s (timeouts.total_s)" if total_s is not None else ""
    message = f"the job did not finish within its deadline{limit}"
    if last_error:
        message += f"; last error: {last_error.get('type')}: {last_error.get('message')}"
    status = last_error.get("status_code") if last_error else None
    return {"type": DEADLINE_EXCEEDED, "message": message, "status_code": status}
