"""What goes wrong with the next model call: scripted answers first, then seeded random faults.

A scripted answer is consumed by exactly one model call, in arrival order. `status` 200 without
a `body` or `kind` means "the normal answer"; `kind` asks for a broken delivery instead:
"reset" drops the connection mid-response, "hang" holds the request far past any client read
timeout, "malformed" sends a 200 whose JSON (or SSE frame) is cut in half.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

FaultKind = Literal["reset", "hang", "malformed"]
FAULT_KINDS: frozenset[str] = frozenset({"reset", "hang", "malformed"})
_ANSWER_KEYS = frozenset({"status", "retry_after", "headers", "delay_ms", "body", "kind"})


class ScriptError(ValueError):
    """A scripted answer that cannot be played (bad status, unknown kind, wrong types)."""


@dataclass(frozen=True)
class ScriptedAnswer:
    """One planned answer to a model call."""

    status: int = 200
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: float = 0
    body: Any = None
    kind: FaultKind | None = None

    @property
    def is_normal(self) -> bool:
        """True when the call should get the ordinary simulated answer."""
        return self.status == 200 and self.body is None and self.kind is None


# The random faults, in a fixed order so a seed always maps to the same sequence.
RANDOM_FAULTS = (
    ScriptedAnswer(status=429, retry_after="1"),
    ScriptedAnswer(status=500),
    ScriptedAnswer(status=503),
    ScriptedAnswer(kind="hang"),
    ScriptedAnswer(kind="reset"),
)


def parse_answer(item: object) -> ScriptedAnswer:
    """Build a ScriptedAnswer from its JSON form, rejecting anything it would misplay."""
    if not isinstance(item, dict):
        raise ScriptError("each answer must be a JSON object")
    unknown = set(item) - _ANSWER_KEYS
    if unknown:
        raise ScriptError(f"unknown answer keys: {sorted(unknown)}")
    status = item.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ScriptError(f"invalid status: {status!r}")
    kind = item.get("kind")
    if kind is not None and kind not in FAULT_KINDS:
        raise ScriptError(f"invalid kind: {kind!r}; expected one of {sorted(FAULT_KINDS)}")
    headers = item.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ScriptError("headers must map strings to strings")
    retry_after = item.get("retry_after")
    if retry_after is not None and not isinstance(retry_after, str | int):
        raise ScriptError("retry_after must be a string or an integer")
    delay_ms = item.get("delay_ms", 0)
    if not isinstance(delay_ms, int | float) or delay_ms < 0:
        raise ScriptError("delay_ms must be a non-negative number")
    return ScriptedAnswer(
        status=status,
        retry_after=None if retry_after is None else str(retry_after),
        headers=dict(headers),
        delay_ms=float(delay_ms),
        body=item.get("body"),
        kind=cast(FaultKind | None, kind),
    )


def parse_script(payload: object) -> list[ScriptedAnswer]:
    """Parse a `POST /_sim/script` body: `{"answers": [answer, ...]}`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("answers"), list):
        raise ScriptError('expected {"answers": [...]}')
    return [parse_answer(item) for item in payload["answers"]]


def parse_fault_header(value: str) -> ScriptedAnswer:
    """Read an `x-sim-fault` header: a status code ("429", "500") or a kind ("reset")."""
    value = value.strip().lower()
    if value in FAULT_KINDS:
        return ScriptedAnswer(kind=cast(FaultKind, value))
    if value.isdigit():
        status = int(value)
        return parse_answer({"status": status, "retry_after": "1" if status == 429 else None})
    raise ScriptError(f"invalid x-sim-fault: {value!r}")


class AnswerScript:
    """A FIFO of scripted answers, each consumed by the next model call."""

    def __init__(self) -> None:
        self._queue: deque[ScriptedAnswer] = deque()

    def extend(self, answers: Iterable[ScriptedAnswer]) -> None:
        """Queue answers after those already scripted."""
        self._queue.extend(answers)

    def pop(self) -> ScriptedAnswer | None:
        """Take the next scripted answer, or None when the script is empty."""
        return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        """Drop every pending answer."""
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class FaultDice:
    """Seeded random faults: the same seed and call order always give the same faults."""

    def __init__(self, rate: float, seed: int) -> None:
        self._rate = rate
        self._rng = random.Random(seed)

    def roll(self) -> ScriptedAnswer | None:
        """Return the random fault for this call, or None for a normal answer."""
        # Both draws happen on every call, so the sequence does not depend on the rate.
        hit = self._rng.random() < self._rate
        fault = RANDOM_FAULTS[self._rng.randrange(len(RANDOM_FAULTS))]
        return fault if hit else None
