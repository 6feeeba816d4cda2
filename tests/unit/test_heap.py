"""The garbage-collector settings servers start with: startup objects frozen, young collections
rarer, cyclic garbage still collected. Each case runs in a fresh interpreter, since the settings
are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from worker.settings import Settings


def _in_fresh_python(code: str) -> Any:
    """Run `code` (which prints one JSON value last) in a new interpreter; returns that value."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_settle_freezes_startup_objects_and_makes_young_collections_rarer() -> None:
    state = _in_fresh_python(
        """
        import gc, json
        from worker import heap
        before = [gc.get_threshold(), gc.get_freeze_count()]
        heap.settle(20_000)
        print(json.dumps([before, [gc.get_threshold(), gc.get_freeze_count()]]))
        """
    )
    (threshold_before, frozen_before), (threshold_after, frozen_after) = state
    assert frozen_before == 0
    assert frozen_after > 1000  # the interpreter's and gmiq's own startup objects
    assert threshold_after == [20_000, threshold_before[1], threshold_before[2]]


def test_zero_keeps_pythons_defaults() -> None:
    state = _in_fresh_python(
        """
        import gc, json
        from worker import heap
        before = gc.get_threshold()
        heap.settle(0)
        print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))
        """
    )
    before, after, frozen = state
    assert after == before
    assert frozen == 0


def test_cyclic_garbage_is_still_collected_without_an_explicit_collect() -> None:
    collected = _in_fresh_python(
        """
        import gc, json, weakref
        from worker import heap
        heap.settle(20_000)
        gone = []
        class Node:
            pass
        for _ in range(30_000):  # each a cycle only the collector can free
            a, b = Node(), Node()
            a.other, b.other = b, a
            weakref.finalize(a, gone.append, 1)
        print(json.dumps(len(gone)))
        """
    )
    # About 3 tracked objects a cycle (two nodes, a finalizer): 30,000 cycles pass the
    # threshold four times or more; only those since the last collection may still wait.
    assert collected >= 20_000


def test_the_threshold_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GMIQ_GC_GEN0_THRESHOLD", raising=False)
    assert Settings().gc_gen0_threshold == 20_000
    monkeypatch.setenv("GMIQ_GC_GEN0_THRESHOLD", "0")
    assert Settings().gc_gen0_threshold == 0
