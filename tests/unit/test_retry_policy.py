"""Outcome classification, Retry-After parsing and backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from worker.retry_policy import (
    classify_status,
    compute_backoff,
    decide_after_failure,
    parse_retry_after,
)

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify_status(status, {}) == "retry"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_request_errors_are_final(status: int) -> None:
    assert classify_status(status, {}) == "fail"


def test_success_statuses() -> None:
    assert classify_status(200, {}) == "succeeded"
    assert classify_status(201, {"x-should-retry": "true"}) == "succeeded"


def test_x_should_retry_overrides_the_status_table() -> None:
    assert classify_status(400, {"x-should-retry": "true"}) == "retry"
    assert classify_status(503, {"x-should-retry": "false"}) == "fail"


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}, NOW) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5
    when = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": when}, NOW) == 30.0
    assert parse_retry_after({"retry-after": "soon"}, NOW) is None
    assert parse_retry_after({}, NOW) is None
    assert parse_retry_after({"retry-after": "-3"}, NOW) == 0.0


def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter() -> None:
    assert [compute_backoff(n, 1.0, 60.0, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert compute_backoff(10, 1.0, 60.0, 1.0) == 60.0
    assert compute_backoff(3, 1.0, 60.0, 0.0) == 0.0
    assert compute_backoff(3, 1.0, 60.0, 0.5) == 2.0


def test_decision_honours_retry_after_over_a_shorter_backoff() -> None:
    decision = decide_after_failure(1, 5, True, 2.0, 1.0, 60.0, 0.1)
    assert decision.verdict == "retry"
    assert decision.delay_s == 2.0
    assert "retry-after" in decision.reason


def test_decision_uses_backoff_when_longer_than_retry_after() -> None:
    decision = decide_after_failure(4, 5, True, 1.0, 1.0, 60.0, 1.0)
    assert decision.delay_s == 8.0


def test_decision_gives_up_after_max_attempts_and_on_final_errors() -> None:
    assert decide_after_failure(5, 5, True, None, 1.0, 60.0, 0.5).verdict == "fail"
    assert decide_after_failure(1, 5, False, None, 1.0, 60.0, 0.5).verdict == "fail"
