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

    def count(self, path: str, outcome: str) -> None:
        """Count how a request was answered (a status code, or a fault kind such as "reset")."""
        self._outcomes[(path, outcome)] += 1

    def entries(self) -> list[dict[str, Any]]:
        """Return the recorded requests, oldest first."""
        return list(self._entries)

    def stats(self) -> dict[str, Any]:
        """Return `{"total": n, "paths": {path: {"total": n, "outcomes": {outcome: n}}}}`."""
        paths: dict[str, dict[str, Any]] = {}
        for (path, outcome), number in sorted(self._outcomes.items()):
            entry = paths.setdefault(path, {"total": 0, "outcomes": {}})
            entry["total"] += number
            entry["outcomes"][outcome] = number
        return {"total": sum(self._outcomes.values()), "paths": paths}

    def clear(self) -> None:
        """Forget every request and count."""
        self._entries.clear()
        self._outcomes.clear()
