"""The server-sent events wire format: incremental decoding (WHATWG rules) and encoding (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched server-sent event."""

    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Incremental SSE parsing (WHATWG rules): any line ending, comments, multi-line data."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by this chunk of the body."""
        buffer = self._pending + chunk
        # A trailing CR may be the first half of a CRLF split across reads: keep it back.
        cut = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        lines = _LINE_END.split(buffer[:cut])
        self._pending = lines.pop() + buffer[cut:]
        events: list[SSEEvent] = []
        for line in lines:
            self._take_line(line, events)
        return events

    def close(self) -> list[SSEEvent]:
        """The last event, for servers that end the body without its blank line."""
        events: list[SSEEvent] = []
        if self._pending:
            self._take_line(self._pending.rstrip(b"\r"), events)
            self._pending = b""
        self._take_line(b"", events)
        return events

    def _take_line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event, self._id))
            self._data, self._event = [], None
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        text = value.removeprefix(b" ").decode("utf-8", "replace")
        if name == b"data":
            self._data.append(text)
        elif name == b"event":
            self._event = text
        elif name == b"id" and "\0" not in text:
            self._id = text


def encode_event(name: str | None, data: bytes, event_id: str | None = None) -> bytes:
    """One event; `data` must be a single line (compact JSON is)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    if name is not None:
        head += f"event: {name}\n"
    return head.encode() + b"data: " + data + b"\n\n"
