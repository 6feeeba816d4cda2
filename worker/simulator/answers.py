"""Build the deterministic non-streamed bodies for chat completions and Responses (pure).

Every body has the complete schema-valid shape (nulls included), its ids derive from the
request digest, and its text and tool arguments derive from the last user message.
"""

from __future__ import annotations

from typing import Any

import orjson

from worker.simulator.identifiers import derive_id, request_digest
from worker.simulator.prompt import last_user_text
from worker.simulator.tool_arguments import build_arguments, sample_value
from worker.simulator.tool_selection import FunctionSpec, choose_functions
from worker.simulator.usage import (
    chat_usage,
    count_json_tokens,
    count_tokens,
    reasoning_tokens,
    response_usage,
)

ANSWER_PREFIX = "Simulated answer to: "
REASONING_PREFIX = "Simulated reasoning about: "
_QUOTED_CHARS = 200
_SYSTEM_FINGERPRINT = "fp_gmiq_simulator"
_SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})


def answer_text(user_text: str) -> str:
    """Return the plain-text answer to a user message."""
    return ANSWER_PREFIX + user_text[:_QUOTED_CHARS]


def build_chat_completion(body: dict[str, Any], now: float) -> dict[str, Any]:
    """Return the `chat.completion` body answering a (validated) chat request."""
    digest = request_digest(body)
    messages = body["messages"]
    user_text = last_user_text(messages)
    functions = choose_functions(body, messages, flat=False)
    reasoning = reasoning_tokens(body.get("reasoning_effort"))
    count = body.get("n") or 1
    choices = [
        _chat_choice(body, digest, index, functions, user_text, reasoning) for index in range(count)
    ]
    visible = sum(_choice_tokens(choice["message"]) for choice in choices)
    return {
        "id": derive_id(digest, "chatcmpl-"),
        "object": "chat.completion",
        "created": int(now),
        "model": body["model"],
        "choices": choices,
        "usage": chat_usage(count_json_tokens(messages), visible, reasoning * count),
        "service_tier": "default",
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }


def build_response(body: dict[str, Any], now: float) -> dict[str, Any]:
    """Return the `response` body answering a (validated) Responses request."""
    digest = request_digest(body)
    conversation = body.get("input", "")
    user_text = last_user_text(conversation)
    reasoning_config = body.get("reasoning")
    effort = _effort(reasoning_config)
    reasoning = reasoning_tokens(effort)
    output, visible, truncated = _response_output(body, digest, user_text, reasoning)
    return {
        "id": derive_id(digest, "resp_"),
        "object": "response",
        "created_at": int(now),
        "status": "incomplete" if truncated else "completed",
        "completed_at": None if truncated else int(now),
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": _echo_reasoning(reasoning_config, effort),
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": _number_or(body.get("temperature"), 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in body.get("tools") or []],
        "top_p": _number_or(body.get("top_p"), 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": response_usage(_input_tokens(body), visible, reasoning),
        "metadata": body.get("metadata") or {},
    }


def _chat_choice(
    body: dict[str, Any],
    digest: str,
    index: int,
    functions: list[FunctionSpec],
    user_text: str,
    reasoning: int,
) -> dict[str, Any]:
    if functions:
        message = _chat_message(None)
        message["tool_calls"] = [
            _chat_tool_call(digest, index, n, spec, user_text) for n, spec in enumerate(functions)
        ]
        finish_reason = "tool_calls"
    else:
        text = _structured_text(_chat_format(body), user_text)
        text, truncated = _truncate(text, _output_cap(body, reasoning))
        message = _chat_message(text)
        finish_reason = "length" if truncated else "stop"
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def _choice_tokens(message: dict[str, Any]) -> int:
    calls = message.get("tool_calls")
    if calls:
        return sum(_call_tokens(call["function"]) for call in calls)
    return count_tokens(message["content"] or "")


def _response_output(
    body: dict[str, Any], digest: str, user_text: str, reasoning: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """Return (output items, visible output tokens, whether the text hit max_output_tokens)."""
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append(_reasoning_item(digest, body.get("reasoning"), user_text))
    functions = choose_functions(body, body.get("input", ""), flat=True)
    if functions:
        calls = [
            _function_call_item(digest, n, spec, user_text) for n, spec in enumerate(functions)
        ]
        return [*output, *calls], sum(_call_tokens(call) for call in calls), False
    text = _structured_text(_text_format(body), user_text)
    text, truncated = _truncate(text, _cap_minus(body.get("max_output_tokens"), reasoning))
    output.append(_message_item(digest, text, "incomplete" if truncated else "completed"))
    return output, count_tokens(text), truncated


def _chat_message(content: str | None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, "annotations": []}


def _chat_tool_call(
    digest: str, choice: int, index: int, spec: FunctionSpec, user_text: str
) -> dict[str, Any]:
    return {
        "id": derive_id(digest, "call_", choice, index),
        "type": "function",
        "function": {"name": spec.name, "arguments": _arguments(spec, user_text)},
    }


def _function_call_item(
    digest: str, index: int, spec: FunctionSpec, user_text: str
) -> dict[str, Any]:
    return {
        "id": derive_id(digest, "fc_", index),
        "type": "function_call",
        "call_id": derive_id(digest, "call_", 0, index),
        "name": spec.name,
        "arguments": _arguments(spec, user_text),
        "status": "completed",
    }


def _message_item(digest: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": derive_id(digest, "msg_"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _reasoning_item(digest: str, config: object, user_text: str) -> dict[str, Any]:
    summary_mode = config.get("summary") if isinstance(config, dict) else None
    summary = []
    if summary_mode in _SUMMARY_MODES:
        summary.append({"type": "summary_text", "text": REASONING_PREFIX + user_text[:100]})
    return {
        "id": derive_id(digest, "rs_"),
        "type": "reasoning",
        "summary": summary,
        "encrypted_content": None,
    }


def _arguments(spec: FunctionSpec, user_text: str) -> str:
    return orjson.dumps(build_arguments(spec.parameters, user_text)).decode()


def _call_tokens(function: dict[str, Any]) -> int:
    return count_tokens(function["name"] + function["arguments"])


def _structured_text(text_format: object, user_text: str) -> str:
    """Return the answer text, shaped as JSON when the request asks for structured output."""
    kind = text_format.get("type") if isinstance(text_format, dict) else None
    if kind == "json_schema" and isinstance(text_format, dict):
        return orjson.dumps(sample_value(text_format.get("schema"), user_text)).decode()
    if kind == "json_object":
        return orjson.dumps({"answer": answer_text(user_text)}).decode()
    return answer_text(user_text)


def _chat_format(body: dict[str, Any]) -> object:
    # Chat nests the JSON schema one level deeper than Responses; flatten it to one shape.
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        nested = response_format.get("json_schema")
        schema = nested.get("schema") if isinstance(nested, dict) else None
        return {"type": "json_schema", "schema": schema}
    return response_format


def _text_format(body: dict[str, Any]) -> object:
    text = body.get("text")
    return text.get("format") if isinstance(text, dict) else None


def _output_cap(body: dict[str, Any], reasoning: int) -> int | None:
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    return _cap_minus(cap, reasoning)


def _cap_minus(cap: object, reasoning: int) -> int | None:
    # Reasoning tokens spend the same budget as visible ones, as on the real API.
    if not isinstance(cap, int):
        return None
    return max(0, cap - reasoning)


def _truncate(text: str, budget: int | None) -> tuple[str, bool]:
    """Cut `text` to `budget` tokens (4 bytes each); report whether it was cut."""
    if budget is None or count_tokens(text) <= budget:
        return text, False
    return text.encode()[: budget * 4].decode(errors="ignore"), True


def _effort(config: object) -> str | None:
    if not isinstance(config, dict):
        return None
    effort = config.get("effort")
    return effort if isinstance(effort, str) else "medium"


def _echo_reasoning(config: object, effort: str | None) -> dict[str, Any] | None:
    if not isinstance(config, dict):
        return None
    return {"effort": effort, "summary": config.get("summary")}


def _echo_tool(tool: object) -> object:
    # The Response schema requires `strict` and `parameters` on function tools, even when
    # the request left them out; Responses defaults `strict` to true.
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    echoed = dict(tool)
    echoed.setdefault("description", None)
    echoed.setdefault("parameters", None)
    if echoed.get("strict") is None:
        echoed["strict"] = True
    return echoed


def _number_or(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def _input_tokens(body: dict[str, Any]) -> int:
    instructions = body.get("instructions")
    extra = count_tokens(instructions) if isinstance(instructions, str) else 0
    return count_json_tokens(body.get("input", "")) + extra
