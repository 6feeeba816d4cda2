"""Reject requests the real API would refuse, with the same `param` it would name (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.simulator.tool_selection import named_choice, offered_functions

_CHAT_ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
_MAX_CHOICES = 128


@dataclass(frozen=True)
class RequestProblem:
    """Why a request is invalid: the message and the offending parameter."""

    message: str
    param: str | None
    code: str | None = None


def _missing(param: str) -> RequestProblem:
    return RequestProblem(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def check_chat_request(body: object) -> RequestProblem | None:
    """Return what is wrong with a chat completion request, or None when it can run."""
    if not isinstance(body, dict):
        return RequestProblem("The request body must be a JSON object.", None)
    if problem := _check_model(body):
        return problem
    messages = body.get("messages")
    if messages is None:
        return _missing("messages")
    if not isinstance(messages, list) or not messages:
        return RequestProblem("'messages' must be a non-empty array.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _CHAT_ROLES:
            return RequestProblem(
                f"Invalid value for 'messages[{index}].role'.", f"messages[{index}].role"
            )
    count = body.get("n")
    if count is not None and (
        not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_CHOICES
    ):
        return RequestProblem(f"'n' must be an integer from 1 to {_MAX_CHOICES}.", "n")
    return _check_tools(body, flat=False)


def check_responses_request(body: object) -> RequestProblem | None:
    """Return what is wrong with a Responses request, or None when it can run."""
    if not isinstance(body, dict):
        return RequestProblem("The request body must be a JSON object.", None)
    if problem := _check_model(body):
        return problem
    conversation = body.get("input")
    if conversation is not None and not isinstance(conversation, str | list):
        return RequestProblem("'input' must be a string or an array of input items.", "input")
    return _check_tools(body, flat=True)


def _check_model(body: dict[str, Any]) -> RequestProblem | None:
    model = body.get("model")
    if model is None:
        return RequestProblem("you must provide a model parameter", "model", None)
    if not isinstance(model, str) or not model:
        return RequestProblem("'model' must be a non-empty string.", "model")
    return None


def _check_tools(body: dict[str, Any], flat: bool) -> RequestProblem | None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return RequestProblem("'tools' must be an array.", "tools")
    named = named_choice(body.get("tool_choice"), flat)
    if named is not None and named not in {spec.name for spec in offered_functions(tools, flat)}:
        return RequestProblem(
            f"Invalid value for 'tool_choice': no function named '{named}' in 'tools'.",
            "tool_choice",
        )
    return None
