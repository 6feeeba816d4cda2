"""Decode server-sent events and assemble a streamed chat completion or Response into the object
a non-streamed call returns, noting what followers can see on the way (pure: no I/O, no clock).

Chat chunks carry deltas per choice, and tool-call fragments joined by their `index`; the usage
chunk (`choices: []`) comes last and `data: [DONE]` ends the stream. Responses streams end with a
terminal event that carries the whole final `Response`. A stream that stops before its end, or
sends a frame that is not JSON, raises `StreamError` (retryable): a half-read answer is never
taken for a whole one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from worker.payloads import HOSTED_TOOL_NAMES
from worker.sse import SSEDecoder, SSEEvent

DONE = "[DONE]"
_CHUNK_ONLY_KEYS = frozenset({"object", "choices", "usage", "obfuscation", "error"})
# Error codes (or types) that say "try again later" rather than "this request cannot work".
_RETRYABLE_CODES = frozenset(
    {"server_error", "rate_limit_exceeded", "internal_error", "service_unavailable", "overloaded"}
)
# Below this, the tokens arrived in one read and a decode rate would be meaningless.
_MIN_DECODE_S = 0.001

UpdateType = Literal["text.delta", "reasoning.delta", "tool_call.started", "tool_call.delta"]


@dataclass(frozen=True)
class StreamUpdate:
    """Something a follower can see before the job ends.

    `index` is the chat choice or the Responses output item; `call_index` places a tool call
    within its chat choice (0 for Responses, where each call is its own output item).
    """

    type: UpdateType
    index: int
    delta: str = ""
    call_index: int = 0
    call_id: str | None = None
    name: str | None = None
    call_type: str | None = None


class StreamError(Exception):
    """The stream did not deliver a whole answer: broken, garbled, or failed upstream."""

    def __init__(self, error_type: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


@dataclass(frozen=True)
class AttemptTiming:
    """Time to the first token and output tokens per second, for one attempt."""

    first_token_s: float | None
    tokens_per_s: float | None


def measure_attempt(
    started: float, first_token_at: float | None, finished: float, output_tokens: int | None
) -> AttemptTiming:
    """TTFT from the request to the first delta; the rate over the decode (first token to end),
    or over the whole call when the answer came at once (non-streamed, or in one read)."""
    first_token_s = None if first_token_at is None else max(0.0, first_token_at - started)
    tokens_per_s = None
    if output_tokens:
        decode_s = finished - first_token_at if first_token_at is not None else 0.0
        span_s = decode_s if decode_s >= _MIN_DECODE_S else finished - started
        tokens_per_s = output_tokens / span_s if span_s > 0 else None
    return AttemptTiming(first_token_s, tokens_per_s)


def merge_updates(updates: list[StreamUpdate]) -> list[StreamUpdate]:
    """Join consecutive deltas of the same text or call, so a batch costs fewer events."""
    merged: list[StreamUpdate] = []
    for update in updates:
        last = merged[-1] if merged else None
        if (
            last is not None
            and update.type != "tool_call.started"
            and (last.type, last.index, last.call_index)
            == (update.type, update.index, update.call_index)
        ):
            merged[-1] = StreamUpdate(
                update.type, update.index, last.delta + update.delta, update.call_index
            )
        else:
            merged.append(update)
    return merged


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _retryable(*codes: object) -> bool:
    """Whether an error reported inside a 200 stream is worth another attempt."""
    names = {str(code).lower() for code in codes if code is not None and code != ""}
    for name in names:
        if name.isdigit() and (int(name) in (408, 409, 429) or int(name) >= 500):
            return True
    # A stream that fails without saying why was most likely cut by the server.
    return not names or bool(names & _RETRYABLE_CODES)


def upstream_error(error: object) -> StreamError:
    """The StreamError for an `{"error": {...}}` object sent inside a stream."""
    if not isinstance(error, dict):
        return StreamError("stream_error", str(error), _retryable())
    code, kind = error.get("code"), error.get("type")
    message = error.get("message")
    error_type = str(kind or code or "stream_error")
    return StreamError(
        error_type, str(message or "the upstream failed mid-stream"), _retryable(code, kind)
    )


class StreamAssembler:
    """Feeds body chunks through SSE decoding to the kind's assembly; `finish` gives the result."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._finished = False

    def feed(self, chunk: bytes) -> list[StreamUpdate]:
        """Take a chunk of the body; returns what followers can now see."""
        updates: list[StreamUpdate] = []
        for event in self._decoder.feed(chunk):
            self._take_event(event, updates)
        return updates

    def finish(self) -> dict[str, Any]:
        """The final object, once the body has ended; raises StreamError if it is incomplete."""
        for event in self._decoder.close():
            self._take_event(event, [])
        if not self._complete():
            raise StreamError("stream_interrupted", "the stream ended before its last event", True)
        return self._result()

    def _take_event(self, event: SSEEvent, updates: list[StreamUpdate]) -> None:
        data = event.data.strip()
        if self._finished or not data:
            return
        if data == DONE:
            self._on_done()
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamError("malformed_stream", f"an SSE frame is not JSON: {exc}", True) from exc
        if not isinstance(payload, dict):
            raise StreamError("malformed_stream", "an SSE frame is not a JSON object", True)
        self._take(payload, updates)

    def _on_done(self) -> None:
        """`[DONE]` ends chat streams; Responses streams end with their terminal event."""

    def _take(self, payload: dict[str, Any], updates: list[StreamUpdate]) -> None:
        raise NotImplementedError

    def _complete(self) -> bool:
        raise NotImplementedError

    def _result(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class _ChatCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ChatChoice:
    role: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)
    calls: dict[int, _ChatCall] = field(default_factory=dict)
    finish_reason: Any = None
    logprobs: dict[str, Any] | None = None

    def joined(self, key: str) -> str | None:
        return "".join(self.texts[key]) if key in self.texts else None

    def as_choice(self, index: int) -> dict[str, Any]:
        # A non-streamed message always has `annotations`; deltas never carry them.
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": self.joined("content"),
            "refusal": self.joined("refusal"),
            "annotations": [],
        }
        reasoning = self.joined("reasoning_content")
        if reasoning is not None:  # GMI's extension for reasoning models
            message["reasoning_content"] = reasoning
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call.id or "",
                    "type": call.type or "function",
                    "function": {"name": call.name or "", "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self.calls.items())
            ]
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }


_CHAT_TEXT_KEYS: tuple[tuple[str, UpdateType | None], ...] = (
    ("content", "text.delta"),
    ("reasoning_content", "reasoning.delta"),
    ("refusal", None),
)


class ChatStreamAssembler(StreamAssembler):
    """`chat.completion.chunk`s into the `chat.completion` they stand for."""

    def __init__(self) -> None:
        super().__init__()
        self._envelope: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._choices: dict[int, _ChatChoice] = {}

    def _on_done(self) -> None:
        self._finished = True

    def _take(self, payload: dict[str, Any], updates: list[StreamUpdate]) -> None:
        if payload.get("error") is not None:
            raise upstream_error(payload["error"])
        for key, value in payload.items():
            if key not in _CHUNK_ONLY_KEYS and (value is not None or key not in self._envelope):
                self._envelope[key] = value
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        for choice in payload.get("choices") or []:
            if isinstance(choice, dict):
                self._take_choice(choice, updates)

    def _take_choice(self, choice: dict[str, Any], updates: list[StreamUpdate]) -> None:
        index = _int(choice.get("index"))
        state = self._choices.setdefault(index, _ChatChoice())
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if isinstance(delta.get("role"), str):
            state.role = delta["role"]
        for key, update_type in _CHAT_TEXT_KEYS:
            piece = delta.get(key)
            if isinstance(piece, str):
                state.texts.setdefault(key, []).append(piece)
                if piece and update_type is not None:
                    updates.append(StreamUpdate(update_type, index, piece))
        for position, call in enumerate(delta.get("tool_calls") or []):
            if isinstance(call, dict):
                _take_call(state, index, _int(call.get("index"), position), call, updates)
        if choice.get("finish_reason") is not None:
            state.finish_reason = choice["finish_reason"]
        if isinstance(choice.get("logprobs"), dict):
            state.logprobs = _merge_logprobs(state.logprobs, choice["logprobs"])

    def _complete(self) -> bool:
        # `[DONE]` is the end; a server that omits it must at least finish every choice and
        # send the usage asked for.
        finished = all(choice.finish_reason is not None for choice in self._choices.values())
        return self._finished or (bool(self._choices) and finished and self._usage is not None)

    def _result(self) -> dict[str, Any]:
        completion = {
            **self._envelope,
            "object": "chat.completion",
            "choices": [choice.as_choice(i) for i, choice in sorted(self._choices.items())],
        }
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion


def _take_call(
    state: _ChatChoice,
    index: int,
    call_index: int,
    fragment: dict[str, Any],
    updates: list[StreamUpdate],
) -> None:
    """One tool-call fragment: the first names the call, the rest add argument text."""
    call = state.calls.get(call_index)
    is_new = call is None
    if call is None:
        call = state.calls[call_index] = _ChatCall()
    function = fragment.get("function")
    function = function if isinstance(function, dict) else {}
    # Some servers repeat the id and name on every fragment: keep the first, never join them.
    if call.id is None and isinstance(fragment.get("id"), str):
        call.id = fragment["id"]
    if isinstance(fragment.get("type"), str):
        call.type = fragment["type"]
    if call.name is None and isinstance(function.get("name"), str):
        call.name = function["name"]
    if is_new:
        updates.append(
            StreamUpdate(
                "tool_call.started",
                index,
                call_index=call_index,
                call_id=call.id,
                name=call.name,
                call_type=call.type or "function",
            )
        )
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        call.arguments.append(arguments)
        if arguments:
            updates.append(StreamUpdate("tool_call.delta", index, arguments, call_index))


def _merge_logprobs(known: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    merged = dict(known or {"content": None, "refusal": None})
    for key in ("content", "refusal"):
        if isinstance(more.get(key), list):
            merged[key] = [*(merged.get(key) or []), *more[key]]
    return merged


_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})
_REASONING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)


class ResponseStreamAssembler(StreamAssembler):
    """`ResponseStreamEvent`s into the final `Response` of their terminal event."""

    def __init__(self) -> None:
        super().__init__()
        self._terminal: dict[str, Any] | None = None
        self._items: dict[int, Any] = {}

    def _take(self, payload: dict[str, Any], updates: list[StreamUpdate]) -> None:
        kind = payload.get("type")
        index = _int(payload.get("output_index"))
        if kind in _TERMINAL_EVENTS:
            response = payload.get("response")
            if not isinstance(response, dict):
                raise StreamError("malformed_stream", f"{kind} without a response object", True)
            self._terminal = response
            self._finished = True
        elif kind == "response.failed":
            response = payload.get("response")
            raise upstream_error(response.get("error") if isinstance(response, dict) else None)
        elif kind == "error":  # not wrapped in {"error": ...}; `type` names the event
            raise upstream_error({"code": payload.get("code"), "message": payload.get("message")})
        elif kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            updates.append(StreamUpdate("text.delta", index, payload["delta"]))
        elif kind in _REASONING_DELTAS and isinstance(payload.get("delta"), str):
            updates.append(StreamUpdate("reasoning.delta", index, payload["delta"]))
        elif kind == "response.function_call_arguments.delta" and payload.get("delta"):
            updates.append(StreamUpdate("tool_call.delta", index, str(payload["delta"])))
        elif kind == "response.output_item.added":
            started = _call_started(index, payload.get("item"))
            if started is not None:
                updates.append(started)
        elif kind == "response.output_item.done":
            self._items[index] = payload.get("item")

    def _complete(self) -> bool:
        return self._terminal is not None

    def _result(self) -> dict[str, Any]:
        assert self._terminal is not None
        result = dict(self._terminal)
        # Tolerate servers whose terminal event leaves the output to the item events.
        if not result.get("output") and self._items:
            result["output"] = [item for _, item in sorted(self._items.items())]
        return result


def _call_started(index: int, item: object) -> StreamUpdate | None:
    if not isinstance(item, dict):
        return None
    item_type = item.get("type")
    if item_type == "function_call":
        call_id, name, call_type = (
            item.get("call_id") or item.get("id"),
            item.get("name"),
            "function",
        )
    elif isinstance(item_type, str) and item_type in HOSTED_TOOL_NAMES:
        call_id, name, call_type = item.get("id"), HOSTED_TOOL_NAMES[item_type], item_type
    else:
        return None
    return StreamUpdate(
        "tool_call.started",
        index,
        call_id=call_id if isinstance(call_id, str) else None,
        name=name if isinstance(name, str) else None,
        call_type=call_type,
    )


def make_assembler(kind: str) -> StreamAssembler:
    """The assembler for a job kind (`chat` or `response`)."""
    return ChatStreamAssembler() if kind == "chat" else ResponseStreamAssembler()


def assemble_stream(kind: str, chunks: Iterable[bytes]) -> dict[str, Any]:
    """The final object of a whole stream body, given in any chunking."""
    assembler = make_assembler(kind)
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.finish()
