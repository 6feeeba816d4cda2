"""The jobs this process is running, whose leases the heartbeat renews."""

from __future__ import annotations

import threading
import uuid
from collections import Counter


class InFlight:
    """The ids of the jobs this process is running, for the lease heartbeat, and which of them
    their callers cancelled (the heartbeat learns it; streamed calls stop on it).

    Counted, not a set: an attempt whose record is still being retried may see its job taken
    back and claimed again by this same process, and the first one ending must not stop the
    second one's lease renewal."""

    def __init__(self) -> None:
        self._ids: Counter[uuid.UUID] = Counter()
        self._cancelled: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._ids[job_id] += 1

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            if self._ids[job_id] > 1:
                self._ids[job_id] -= 1
                return
            self._ids.pop(job_id, None)
            self._cancelled.discard(job_id)

    def cancel(self, job_ids: list[uuid.UUID]) -> None:
        with self._lock:
            self._cancelled.update(job_id for job_id in job_ids if job_id in self._ids)

    def is_cancelled(self, job_id: uuid.UUID) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def snapshot(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._ids)
