"""Which limits a call gets, and when a job is out of time."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api_contracts.jobs import JobSubmitRequest
from worker.timeouts import CallLimits, call_limits, deadline_error, retry_outlives_deadline

DEFAULTS = CallLimits(connect_s=10, read_s=600, total_s=1800)


def test_without_job_timeouts_or_deadline_the_deployment_defaults_apply() -> None:
    assert call_limits(DEFAULTS, None, None) == DEFAULTS


def test_job_timeouts_replace_the_defaults_field_by_field() -> None:
    limits = call_limits(DEFAULTS, {"read_s": 900, "call_s": 1200}, None)
    assert limits == CallLimits(connect_s=10, read_s=900, total_s=1200)


def test_the_whole_call_is_cut_to_the_time_left_and_no_timeout_outlasts_it() -> None:
    limits = call_limits(DEFAULTS, {"connect_s": 20}, time_left_s=5.0)
    assert limits == CallLimits(connect_s=5.0, read_s=5.0, total_s=5.0)


def test_no_time_left_gives_a_call_no_time() -> None:
    assert call_limits(DEFAULTS, None, time_left_s=-3.0).total_s == 0.0


def test_a_retry_that_would_start_at_or_after_the_deadline_outlives_it() -> None:
    assert retry_outlives_deadline(10.0, time_left_s=4.0)
    assert retry_outlives_deadline(4.0, time_left_s=4.0)
    assert not retry_outlives_deadline(1.0, time_left_s=4.0)
    assert not retry_outlives_deadline(1e9, time_left_s=None)


def test_the_deadline_error_names_the_limit_and_the_last_failure() -> None:
    last = {"type": "rate_limit_exceeded", "message": "slow down", "status_code": 429}
    error = deadline_error(30.0, last)
    assert error["type"] == "deadline_exceeded"
    assert error["status_code"] == 429
    assert "deadline of 30 s (timeouts.total_s)" in error["message"]
    assert "last error: rate_limit_exceeded: slow down" in error["message"]
    assert deadline_error(None, None) == {
        "type": "deadline_exceeded",
        "message": "the job did not finish within its deadline",
        "status_code": None,
    }


@pytest.mark.parametrize(
    ("timeouts", "field"),
    [
        ({"read_s": 0}, "read_s"),
        ({"call_s": -1}, "call_s"),
        ({"total_s": 10**9}, "total_s"),
        ({"connect_s": "soon"}, "connect_s"),
        ({"deadline": 5}, "deadline"),
    ],
)
def test_bad_timeouts_are_refused_naming_the_field(timeouts: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        JobSubmitRequest.model_validate(
            {
                "kind": "chat",
                "request": {"messages": [{"role": "user", "content": "hi"}]},
                "timeouts": timeouts,
            }
        )
    assert [e["loc"] for e in raised.value.errors()] == [("timeouts", field)]
