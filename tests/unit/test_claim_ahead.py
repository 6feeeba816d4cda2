"""How many jobs a full worker claims ahead: the slots expected to free during two claims."""

from __future__ import annotations

from worker.claim_ahead import ClaimPace, claims_ahead


def test_claims_ahead_are_the_slots_that_free_during_two_claims() -> None:
    # 200 calls of 500 ms free 400 slots a second; two 30 ms claims see 24 of them free.
    assert claims_ahead(400.0, 0.030, limit=50) == 24
    # Minute-long calls: a slot frees every 300 ms, none during two 30 ms claims.
    assert claims_ahead(200 / 60, 0.030, limit=50) == 0
    assert claims_ahead(0.0, 0.030, limit=50) == 0
    # Never more than the limit, however slow the claims.
    assert claims_ahead(400.0, 2.0, limit=50) == 50


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_follows_how_fast_slots_free_and_how_long_claims_take() -> None:
    clock = _Clock()
    pace = ClaimPace(limit=50, window_s=0.25, clock=clock)
    assert pace.ahead == 0  # nothing measured: nothing claimed ahead
    # Claims that take 30 ms, and slots freeing 400 times a second.
    for _ in range(500):
        taken_at = clock.now
        clock.now += 0.030
        pace.claimed(taken_at)
    rises = 0
    for _ in range(400):
        clock.now += 0.0025
        rises += pace.slot_freed()
    assert pace.ahead == 24
    assert rises == 24  # what lets that many more takers in

    # The calls turn long: the next slot frees 20 s later, and the pace drops at once.
    clock.now += 20.0
    assert pace.slot_freed() == 0
    assert pace.ahead == 0


def test_one_slow_claim_does_not_set_the_pace_alone() -> None:
    clock = _Clock()
    pace = ClaimPace(limit=50, window_s=0.25, clock=clock)

    def claims(count: int, took_s: float) -> None:
        for _ in range(count):
            clock.now += took_s
            pace.claimed(clock.now - took_s)

    claims(500, 0.010)
    for _ in range(400):
        clock.now += 0.0025
        pace.slot_freed()
    assert pace.ahead == 8  # 400/s x 2 x 10 ms
    # One claim of a second (a lock, a checkpoint) is an outlier, not the new pace...
    claims(1, 1.0)
    assert 8 < pace.ahead < claims_ahead(400.0, 1.0, limit=50)
    # ...and the claims after it bring the pace back.
    claims(250, 0.010)
    assert pace.ahead == 8
