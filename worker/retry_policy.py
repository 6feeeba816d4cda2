"""Classify an upstream outcome and choose the next delay (pure: time and randomness passed in)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Literal

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Longer than openai-python's 8 s cap: GMI rate limits are per minute, so short waits just burn
# attempts; 60 s lets a minute window roll over within the default 5 attempts.
DEFAULT_BASE_S = 1.0
DEFAULT_CAP_S = 60.0

Verdict = Literal["succeeded", "retry", "fail"]


@dataclass(frozen=True)
class Decision:
    """What to do after one attempt, and why."""

    verdict: Verdict
    delay_s: float = 0.0
    reason: str = ""


def classify_status(status_code: int, headers: Mapping[str, str]) -> Verdict:
    """2xx succeeds; `x-should-retry` overrides the status table; otherwise by status."""
    if 200 <= status_code < 300:
        return "succeeded"
    should_retry = headers.get("x-should-retry", "").lower()
    if should_retry == "true":
        return "retry"
    if should_retry == "false":
        return "fail"
    return "retry" if status_code in RETRYABLE_STATUSES or status_code >= 500 else "fail"


def parse_retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the upstream asked us to wait: `retry-after-ms`, then `Retry-After` (s or date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def compute_backoff(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling: float = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return ceiling * rand


def decide_after_failure(
    attempt: int,
    max_attempts: int,
    retryable: bool,
    retry_after_s: float | None,
    base_s: float,
    cap_s: float,
    rand: float,
) -> Decision:
    """Retry with backoff (never sooner than the upstream asked) until attempts run out."""
    if not retryable:
        return Decision("fail", reason="final error")
    if attempt >= max_attempts:
        return Decision("fail", reason=f"gave up after {attempt} attempts")
    backoff = compute_backoff(attempt, base_s, cap_s, rand)
    if retry_after_s is not None and retry_after_s > backoff:
        return Decision("retry", retry_after_s, f"retry-after {retry_after_s:g}s")
    return Decision("retry", backoff, f"backoff attempt {attempt}")
