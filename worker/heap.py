"""Garbage collection set for a long-running server process.

Python's cyclic collector runs a young collection every 700 net allocations of container
objects. A busy API or worker allocates (and frees, by reference counting) several thousand per
job, so it collected hundreds of times a second, and each collection that reached the older
generations walked every object the process built at startup (FastAPI, SQLAlchemy, Celery and
pydantic models: ~150,000 of them). That was 13% of the API's CPU per submission and 5-10% of a
worker's (docs/performance.md). Objects that survive startup are frozen, out of the collector's
sight, and young collections come only after `gen0_threshold` net allocations: cyclic garbage
still gets collected, a little later.
"""

from __future__ import annotations

import gc


def settle(gen0_threshold: int) -> None:
    """Collect once, freeze what survives, and collect young objects every `gen0_threshold` net
    allocations. Called once the process has started; 0 leaves Python's defaults."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, older, oldest)
