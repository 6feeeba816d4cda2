"""The batcher: what queues while a lane is busy runs as one batch; results and errors reach
the right callers."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from worker.batcher import Batcher, BatcherClosedError

WAIT_S = 10


class Gate:
    """A `work` function that records each batch and holds the first one until opened."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        if len(self.batches) == 1:
            self.entered.set()
            assert self.opened.wait(WAIT_S)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def held(max_batch: int) -> tuple[Gate, Batcher[int, int], Future[int]]:
    """A batcher whose one lane is busy with a first batch, [0], until the gate opens."""
    gate = Gate()
    batcher = Batcher(gate, lanes=1, max_batch=max_batch, name="test")
    first = batcher.submit(0)
    assert gate.entered.wait(WAIT_S)
    return gate, batcher, first


def test_items_queued_while_the_lane_is_busy_run_as_one_batch() -> None:
    gate, batcher, first = held(max_batch=100)
    try:
        waiting = [batcher.submit(i) for i in range(2, 12, 2)]
        gate.opened.set()
        assert first.result(WAIT_S) == 0
        assert [f.result(WAIT_S) for f in waiting] == [20, 40, 60, 80, 100]
        assert gate.batches == [[0], [2, 4, 6, 8, 10]]
    finally:
        batcher.close()


def test_a_batch_never_exceeds_max_batch() -> None:
    gate, batcher, first = held(max_batch=2)
    try:
        waiting = [batcher.submit(i) for i in (2, 4, 6, 8, 10)]
        gate.opened.set()
        first.result(WAIT_S)
        for future in waiting:
            future.result(WAIT_S)
        assert gate.batches[1:] == [[2, 4], [6, 8], [10]]
    finally:
        batcher.close()


def test_an_items_own_exception_reaches_only_its_caller() -> None:
    gate = Gate()
    gate.opened.set()
    batcher = Batcher(gate, lanes=1, max_batch=10, name="test")
    try:
        ok, odd = batcher.submit(4), batcher.submit(5)
        assert ok.result(WAIT_S) == 40
        with pytest.raises(ValueError, match="odd 5"):
            odd.result(WAIT_S)
    finally:
        batcher.close()


def test_an_exception_of_the_whole_batch_reaches_every_caller_and_the_lane_goes_on() -> None:
    calls: list[list[str]] = []

    def work(items: list[str]) -> list[str | BaseException]:
        calls.append(items)
        if "boom" in items:
            raise ConnectionError("database down")
        return [item.upper() for item in items]

    batcher = Batcher(work, lanes=1, max_batch=10, name="test")
    try:
        with pytest.raises(ConnectionError):
            batcher.submit("boom").result(WAIT_S)
        assert batcher.submit("after").result(WAIT_S) == "AFTER"
    finally:
        batcher.close()


def test_a_wrong_number_of_results_fails_the_batch_instead_of_hanging_it() -> None:
    batcher: Batcher[int, int] = Batcher(lambda items: [], lanes=1, max_batch=10, name="test")
    try:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            batcher.submit(1).result(WAIT_S)
    finally:
        batcher.close()


def test_closing_fails_what_is_still_queued_and_refuses_more() -> None:
    gate, batcher, running = held(max_batch=10)
    queued = batcher.submit(2)
    batcher.close()
    with pytest.raises(BatcherClosedError):
        queued.result(WAIT_S)
    with pytest.raises(BatcherClosedError):
        batcher.submit(4).result(WAIT_S)
    gate.opened.set()
    assert running.result(WAIT_S) == 0  # a batch already running finishes


def test_an_item_its_caller_cancelled_is_skipped_and_does_not_break_the_lane_or_close() -> None:
    gate, batcher, running = held(max_batch=10)
    cancelled, kept = batcher.submit(2), batcher.submit(4)
    assert cancelled.cancel()  # as asyncio.wrap_future does when its task is cancelled
    gate.opened.set()
    assert running.result(WAIT_S) == 0
    assert kept.result(WAIT_S) == 40
    assert gate.batches == [[0], [4]]

    gate, batcher2, _ = held(max_batch=10)
    queued, dropped = batcher2.submit(2), batcher2.submit(4)
    assert dropped.cancel()
    batcher2.close()  # must not trip over the cancelled future
    with pytest.raises(BatcherClosedError):
        queued.result(WAIT_S)
    gate.opened.set()
    batcher.close()


def test_closing_can_wait_for_the_batch_already_running() -> None:
    gate, batcher, first = held(max_batch=8)
    closed = threading.Event()

    def close() -> None:
        batcher.close(wait_s=WAIT_S)
        closed.set()

    threading.Thread(target=close, daemon=True).start()
    # Running, so not failed: close waits for it rather than returning while it may still land.
    assert not closed.wait(0.3)
    assert not first.done()
    gate.opened.set()
    assert closed.wait(WAIT_S)
    assert first.result() == 0
