"""How many jobs a full worker claims ahead of its free slots.

A slot that frees waits for its next job's claim: a statement, and in a busy process two waits
for the GIL on the way (25-40 ms at 200 calls in flight, 5-8% of a 500 ms call). A full worker
that makes the next claims while its calls still run hides that wait: a slot that frees goes at
once to a job already claimed. But a job claimed ahead waits for its slot as `running`, where a
worker with a free slot could have run it. So a process claims ahead only as many jobs as it
expects slots to free while two claims are made: the rate its slots free at, times twice the
time its claims take on average. Twice, because claims end in batches and a claim slower than
the average should still find its slot ready. Slots of long calls free slowly, and a full
worker of minute-long calls claims nothing ahead; 200 calls of 500 ms with 30 ms claims claim
about 24 ahead, each waiting about one claim's time for its slot (measured: calls in flight at
189 of 200 without, 193 with; docs/performance.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The claim time is a moving average over about the last 50 claims: a batch of claims ends
# together, and a lighter average swung the pace between 6 and 46 at 200 in flight.
_CLAIM_WEIGHT = 0.02


def claims_ahead(frees_per_s: float, claim_s: float, limit: int) -> int:
    """Jobs to claim beyond the free slots: the slots expected to free during two claims."""
    return max(0, min(limit, round(frees_per_s * claim_s * 2)))


class ClaimPace:
    """Measures how fast slots free and how long claims take, and says how many jobs to claim
    ahead (at most `limit`). Its measures come from the call loop's thread; `ahead` is read
    under the caller's lock from any thread."""

    def __init__(
        self, limit: int, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._frees = 0
        self._frees_per_s = 0.0
        self._claim_s = 0.0
        self.ahead = 0

    def slot_freed(self) -> int:
        """A call ended and freed its slot; returns how many more jobs may be claimed ahead
        now. The rate is read over windows of `window_s`; a window that ends after a long
        quiet spell reads a low rate, so a worker whose calls turned long stops claiming ahead
        at its next freed slot."""
        self._frees += 1
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self._window_s:
            return 0
        self._frees_per_s = self._frees / elapsed
        self._frees = 0
        self._window_start = now
        return self._update()

    def claimed(self, taken_at: float) -> int:
        """A claim ended; `taken_at` is when its job was taken (on the same clock). Returns
        how many more jobs may be claimed ahead now."""
        took = max(0.0, self._clock() - taken_at)
        self._claim_s += (took - self._claim_s) * _CLAIM_WEIGHT
        return self._update()

    def _update(self) -> int:
        before = self.ahead
        self.ahead = claims_ahead(self._frees_per_s, self._claim_s, self._limit)
        return max(0, self.ahead - before)
