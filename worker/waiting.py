"""Waiting for a state by polling it with a deadline (never a bare sleep): the tests and the
benchmark wait for processes, rows and queues this way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05
) -> Any:
    """Poll until the predicate returns something truthy and return it; TimeoutError naming
    `what` once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)
