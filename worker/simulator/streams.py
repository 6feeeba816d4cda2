"""Turn a finished answer into the SSE frames the API streams for it (pure).

Streams are derived from the non-streamed body, so both deliveries always agree on text,
tool calls, ids and usage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

import orjson

CHAT_DONE_FRAME = b"data: [DONE]\n\n"
_ARGUMENT_FRAGMENT_CHARS = 8
# A word and the whitespace after it: roughly what one token delta looks like.
_WORD_PATTERN = re.compile(r"\S+\s*|\s+")


def split_text(text: str) -> list[str]:
    """Split text into word-sized deltas that join back to the exact text."""
    return _WORD_PATTERN.findall(text)


def split_arguments(arguments: str) -> list[str]:
    """Split a JSON arguments string into small fragments, as models stream them."""
    size = _ARGUMENT_FRAGMENT_CHARS
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def chat_frames(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """Return the `data:` frames of a streamed chat completion, ending with `[DONE]`."""
    envelope = {
        key: completion[key]
        for key in ("id", "created", "model", "service_tier", "system_fingerprint")
    }
    envelope["object"] = "chat.completion.chunk"
    if include_usage:
        # The API puts `usage: null` on every chunk but the last when usage was asked for.
        envelope["usage"] = None
    frames = [
        _data_frame({**envelope, "choices": [choice_delta]})
        for choice in completion["choices"]
        for choice_delta in _choice_deltas(choice)
    ]
    if include_usage:
        frames.append(_data_frame({**envelope, "choices": [], "usage": completion["usage"]}))
    frames.append(CHAT_DONE_FRAME)
    return frames


def _choice_deltas(choice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    index = choice["index"]
    message = choice["message"]
    calls = message.get("tool_calls") or []

    def delta(body: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": body, "logprobs": None, "finish_reason": finish_reason}

    yield delta({"role": "assistant", "content": None if calls else "", "refusal": None})
    for piece in split_text(message["content"] or ""):
        yield delta({"content": piece})
    for call_index, call in enumerate(calls):
        header = {"name": call["function"]["name"], "arguments": ""}
        yield delta(
            {
                "tool_calls": [
                    {"index": call_index, "id": call["id"], "type": "function", "function": header}
                ]
            }
        )
    # Parallel calls' fragments are interleaved, so clients must assemble them by `index`.
    fragment_lists = [split_arguments(call["function"]["arguments"]) for call in calls]
    for round_ in zip_longest(*fragment_lists):
        for call_index, fragment in enumerate(round_):
            if fragment is not None:
                yield delta(
                    {"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]}
                )
    yield delta({}, choice["finish_reason"])


def response_frames(response: dict[str, Any]) -> list[bytes]:
    """Return the `event:`/`data:` frames of a streamed Response, ending with its terminal event."""
    events: list[dict[str, Any]] = []
    # The API sends `usage: null` here, but the spec's Response does not allow null usage;
    # leaving the optional key out satisfies both the spec and the SDK.
    pending = {key: value for key, value in response.items() if key != "usage"}
    pending.update(status="in_progress", completed_at=None, output=[], incomplete_details=None)
    events.append({"type": "response.created", "response": pending})
    events.append({"type": "response.in_progress", "response": pending})
    for output_index, item in enumerate(response["output"]):
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": output_index,
                "item": _pending_item(item),
            }
        )
        events.extend(_item_events(item, output_index))
        events.append(
            {"type": "response.output_item.done", "output_index": output_index, "item": item}
        )
    terminal = "response.completed" if response["status"] == "completed" else "response.incomplete"
    events.append({"type": terminal, "response": response})
    return [
        _event_frame({**event, "sequence_number": number}) for number, event in enumerate(events)
    ]


def _pending_item(item: dict[str, Any]) -> dict[str, Any]:
    if item["type"] == "message":
        return {**item, "status": "in_progress", "content": []}
    if item["type"] == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    return {**item, "summary": []}


def _item_events(item: dict[str, Any], output_index: int) -> Iterator[dict[str, Any]]:
    place = {"item_id": item["id"], "output_index": output_index}
    if item["type"] == "message":
        for content_index, part in enumerate(item["content"]):
            yield from _text_part_events(place, content_index, part)
    elif item["type"] == "function_call":
        for fragment in split_arguments(item["arguments"]):
            yield {"type": "response.function_call_arguments.delta", **place, "delta": fragment}
        yield {
            "type": "response.function_call_arguments.done",
            **place,
            "name": item["name"],
            "arguments": item["arguments"],
        }
    elif item["type"] == "reasoning":
        for summary_index, part in enumerate(item["summary"]):
            yield from _summary_part_events(place, summary_index, part)


def _text_part_events(
    place: dict[str, Any], content_index: int, part: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    at = {**place, "content_index": content_index}
    yield {"type": "response.content_part.added", **at, "part": {**part, "text": ""}}
    for piece in split_text(part["text"]):
        yield {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []}
    yield {"type": "response.content_part.done", **at, "part": part}


def _summary_part_events(
    place: dict[str, Any], summary_index: int, part: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    at = {**place, "summary_index": summary_index}
    yield {"type": "response.reasoning_summary_part.added", **at, "part": {**part, "text": ""}}
    for piece in split_text(part["text"]):
        yield {"type": "response.reasoning_summary_text.delta", **at, "delta": piece}
    yield {"type": "response.reasoning_summary_text.done", **at, "text": part["text"]}
    yield {"type": "response.reasoning_summary_part.done", **at, "part": part}


def break_frames(frames: list[bytes]) -> list[bytes]:
    """Return a stream that starts normally, then sends a frame whose JSON is cut in half."""
    head = frames[:2]
    victim = frames[min(2, len(frames) - 1)]
    return [*head, victim[: len(victim) // 2] + b"\n\n"]


def _data_frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _event_frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
