"""Group commit: items handed in one by one, done in batches by a few threads.

A worker's claims and records are each one round trip to Postgres. Done one per thread, every
round trip is a GIL hand-off among dozens of busy threads, and contention, not the statements,
is where the CPU goes (docs/performance.md). Here a lane thread takes everything that queued
while it was busy and does it in one call: at low load a batch is one item and waits for
nothing; under load batches grow by themselves, and the round trips per job fall.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class BatcherClosedError(RuntimeError):
    """The batcher was closed before the item's batch ran."""


class Batcher(Generic[Item, Outcome]):
    """Runs `work` on batches of at most `max_batch` items, on `lanes` threads.

    `work` returns one result per item, in order: an outcome, or an exception for that item
    alone. An exception `work` raises is every item's of that batch."""

    def __init__(
        self,
        work: Callable[[list[Item]], Sequence[Outcome | BaseException]],
        lanes: int,
        max_batch: int,
        name: str,
    ) -> None:
        self._work = work
        self._max_batch = max_batch
        self._pending: deque[tuple[Item, Future[Outcome]]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._lane, name=f"{name}-{n}", daemon=True)
            for n in range(lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: Item) -> Future[Outcome]:
        """Queue the item; its future holds its outcome once its batch has run."""
        future: Future[Outcome] = Future()
        with self._changed:
            if self._closed:
                future.set_exception(BatcherClosedError("closed"))
                return future
            self._pending.append((item, future))
            self._changed.notify()
        return future

    def close(self, wait_s: float = 0.0) -> None:
        """Run no more batches; items still queued fail with `BatcherClosedError`. Waits up to
        `wait_s` for the batches already running to end."""
        with self._changed:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._changed.notify_all()
        for _, future in dropped:
            # A caller may have cancelled it (an asyncio task wrapping it was cancelled).
            if future.set_running_or_notify_cancel():
                future.set_exception(BatcherClosedError("closed"))
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[tuple[Item, Future[Outcome]]] | None:
        """The next batch, without the items their callers cancelled; None once closed."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or bool(self._pending))
                if self._closed:
                    return None
                count = min(len(self._pending), self._max_batch)
                taken = [self._pending.popleft() for _ in range(count)]
            # Running from here on: a future can no longer be cancelled under the lane.
            batch = [(item, f) for item, f in taken if f.set_running_or_notify_cancel()]
            if batch:
                return batch

    def _lane(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self._work([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            except BaseException as exc:  # every item of the batch gets it
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
