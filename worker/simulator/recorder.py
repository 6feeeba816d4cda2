"""The log of /v1 requests the simulator received and the counts of how it answered them."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

# Never stored: the log is served over HTTP and secrets must not leak into test output.
_HIDDEN_HEADERS = frozenset({"authorization"})


class RequestLog:
    """Bounded request log plus per-path outcome counts, for tests to assert on."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._outcomes: Counter[tuple[str, str]] = Counter()
        # Model calls being answered now, and the most there were at once.
        self._open = 0
        self._open_peak = 0

    def record(
        self, method: str, path: str, headers: Mapping[str, str], body: object, received_at: float
    ) -> None:
        """Keep one request, with its parsed JSON body and without its Authorization header."""
        self._entries.append(
            {
                "method": method,
                "path": path,
                "headers": {k: v for k, v in headers.items() if k.lower() not in _HIDDEN_HEADERS},
                "body": body,
                "received_at": received_at,
            }
        )

    def opened(self) -> None:
        """A model call arrived (tests check how many a worker keeps in flight at once)."""
        self._open += 1
        self._open_peak = max(self._open_peak, self._open)

    def closed(self) -> None:
        """A model call was answered (a streamed one: its stream began)."""
        self._open -= 1

    def count(self, path: str, outcome: str) -> None:
        """Count how a request was answered (a status code, or a fault kind such as "reset")."""
        self._outcomes[(path, outcome)] += 1

    def entries(self) -> list[dict[str, Any]]:
        """Return the recorded requests, oldest first."""
        return list(self._entries)

    def stats(self) -> dict[str, Any]:
        """Return `{"total": n, "paths": {path: {"total": n, "outcomes": {outcome: n}}},
        "in_flight_peak": n}`: the most model calls that were being answered at once."""
        paths: dict[str, dict[str, Any]] = {}
        for (path, outcome), number in sorted(self._outcomes.items()):
            entry = paths.setdefault(path, {"total": 0, "outcomes": {}})
            entry["total"] += number
            entry["outcomes"][outcome] = number
        return {
            "total": sum(self._outcomes.values()),
            "paths": paths,
            "in_flight_peak": self._open_peak,
        }

    def clear(self) -> None:
        """Forget every request and count."""
        self._entries.clear()
        self._outcomes.clear()
        self._open_peak = self._open
