"""Read what an answer depends on out of a request: the last user text and the last turn (pure)."""

from __future__ import annotations

from typing import Any

# Part types that carry plain text, across chat (`text`) and Responses (`input_text`).
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def content_text(content: object) -> str:
    """Return the text of a message content: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in _TEXT_PART_TYPES
            and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def last_user_text(messages: object) -> str:
    """Return the text of the last user message in a chat `messages` or Responses `input` list."""
    if isinstance(messages, str):
        # Responses accepts a bare string as the whole input: it is the user's turn.
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def ends_with_tool_result(messages: object) -> bool:
    """Tell whether the conversation's last turn hands tool output back to the model."""
    if not isinstance(messages, list) or not messages:
        return False
    last: Any = messages[-1]
    if not isinstance(last, dict):
        return False
    return last.get("role") in ("tool", "function") or last.get("type") == "function_call_output"
