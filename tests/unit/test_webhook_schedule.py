"""What happens after a delivery attempt: delivered, retried on schedule (honouring
Retry-After), or failed (410 Gone, refused address, schedule exhausted)."""

from __future__ import annotations

import pytest

from worker.settings import Settings
from worker.webhooks import decide_after_attempt

SVIX = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_delivers(status: int) -> None:
    assert decide_after_attempt(1, SVIX, status, None).verdict == "delivered"


def test_failures_wait_the_next_scheduled_delay() -> None:
    delays = [decide_after_attempt(n, SVIX, 500, None).delay_s for n in range(1, 8)]
    assert delays == list(SVIX[1:])
    assert decide_after_attempt(2, SVIX, None, None).verdict == "retry"  # timeout, refused


@pytest.mark.parametrize("status", [301, 302, 400, 404, 429, 500, 503])
def test_redirects_and_errors_other_than_410_are_retried(status: int) -> None:
    assert decide_after_attempt(1, SVIX, status, None).verdict == "retry"


def test_schedule_exhausted_dead_letters_the_event() -> None:
    decision = decide_after_attempt(8, SVIX, 500, None)
    assert decision.verdict == "failed"
    assert decision.reason == "gave up after 8 attempts"


def test_gone_stops_at_once() -> None:
    decision = decide_after_attempt(1, SVIX, 410, None)
    assert decision.verdict == "failed"
    assert "410" in decision.reason


def test_a_refused_address_fails_at_once_with_its_reason() -> None:
    decision = decide_after_attempt(1, SVIX, None, None, refused="resolves to 10.0.0.1")
    assert (decision.verdict, decision.reason) == ("failed", "resolves to 10.0.0.1")


def test_retry_after_longer_than_the_schedule_is_honoured_up_to_the_longest_delay() -> None:
    assert decide_after_attempt(1, SVIX, 429, 60.0).delay_s == 60.0
    assert decide_after_attempt(1, SVIX, 429, 60.0).reason == "retry-after 60s"
    assert decide_after_attempt(1, SVIX, 503, 10**9).delay_s == 36000.0
    # Shorter than scheduled: the schedule wins.
    assert decide_after_attempt(3, SVIX, 503, 1.0).delay_s == 1800.0


def test_schedule_setting_reads_comma_separated_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().webhook_retry_schedule_s == SVIX
    monkeypatch.setenv("GMIQ_WEBHOOK_RETRY_SCHEDULE_S", "0, 0.5,2")
    assert Settings().webhook_retry_schedule_s == (0.0, 0.5, 2.0)
    monkeypatch.setenv("GMIQ_WEBHOOK_RETRY_SCHEDULE_S", "(0.0, 1.0)")
    assert Settings().webhook_retry_schedule_s == (0.0, 1.0)
    monkeypatch.setenv("GMIQ_WEBHOOK_RETRY_SCHEDULE_S", "0,-1")
    with pytest.raises(ValueError, match="none negative"):
        Settings()
