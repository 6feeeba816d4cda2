"""Build upstream requests and parse upstream bodies (pure: no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from api_contracts.jobs import JobKind

UPSTREAM_PATHS: dict[str, str] = {"chat": "chat/completions", "response": "responses"}
# Responses output items of hosted tools, stored as tool calls under these names.
HOSTED_TOOL_NAMES: dict[str, str] = {"web_search_call": "web_search"}


@dataclass(frozen=True)
class ParsedToolCall:
    """A tool call as we store it: parsed arguments, or the raw text when it is not JSON."""

    call_id: str
    name: str
    type: str
    arguments: Any
    arguments_raw: str | None


@dataclass(frozen=True)
class ParsedUsage:
    """Token counts under one set of names for both APIs."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    model: str | None


@dataclass(frozen=True)
class ParsedResult:
    """What a successful upstream body means for the job."""

    output_text: str | None
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    usage: ParsedUsage | None = None


class MalformedResponseError(ValueError):
    """A 2xx body that is not the object the API promises."""


def build_upstream_request(kind: JobKind, request: dict[str, Any], model: str) -> tuple[str, bytes]:
    """The path (relative to the base URL) and the body; the caller's fields pass as given,
    except that a streamed chat asks for its usage chunk (else usage would be lost)."""
    body = dict(request)
    body["model"] = body.get("model") or model
    if kind == "chat" and body.get("stream") is True:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return UPSTREAM_PATHS[kind], orjson.dumps(body)


def continue_request(
    kind: JobKind, request: dict[str, Any], parent_request: dict[str, Any], parent_result: Any
) -> dict[str, Any]:
    """The request of a follow-up to a succeeded job: a response chains on the parent's
    upstream id; a chat gets the parent's messages and assistant turn before its own.
    Raises ValueError saying why the parent cannot be continued."""
    if not isinstance(parent_result, dict):
        raise ValueError("has no stored result to continue from")
    if kind == "response":
        response_id = parent_result.get("id")
        if not isinstance(response_id, str) or not response_id:
            raise ValueError("has no upstream response id")
        given = request.get("previous_response_id")
        if given is not None and given != response_id:
            raise ValueError("conflicts with request.previous_response_id")
        return {**request, "previous_response_id": response_id}
    choices = parent_result.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    history = parent_request.get("messages")
    if not isinstance(message, dict) or not isinstance(history, list):
        raise ValueError("has no assistant message to continue from")
    return {**request, "messages": [*history, assistant_turn(message), *request["messages"]]}


def assistant_turn(message: dict[str, Any]) -> dict[str, Any]:
    """A completion's message as a request message: only the fields an assistant turn has."""
    turn: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("refusal") is not None:
        turn["refusal"] = message["refusal"]
    if message.get("tool_calls"):
        turn["tool_calls"] = message["tool_calls"]
    return turn


def parse_tool_arguments(raw: str | None) -> tuple[Any, str | None]:
    """Arguments as JSON when they parse; otherwise None and the raw text, so nothing is lost."""
    if raw is None:
        return None, None
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, raw


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    details = usage.get(key)
    return details if isinstance(details, dict) else {}


def parse_usage(kind: JobKind, usage: Any, model: str | None) -> ParsedUsage | None:
    """Map chat's prompt/completion names and Responses' input/output names to ours."""
    if not isinstance(usage, dict):
        return None
    if kind == "chat":
        input_tokens = _int(usage.get("prompt_tokens"))
        output_tokens = _int(usage.get("completion_tokens"))
        cached = _int(_details(usage, "prompt_tokens_details").get("cached_tokens"))
        reasoning = _int(_details(usage, "completion_tokens_details").get("reasoning_tokens"))
    else:
        input_tokens = _int(usage.get("input_tokens"))
        output_tokens = _int(usage.get("output_tokens"))
        cached = _int(_details(usage, "input_tokens_details").get("cached_tokens"))
        reasoning = _int(_details(usage, "output_tokens_details").get("reasoning_tokens"))
    total = _int(usage.get("total_tokens")) or input_tokens + output_tokens
    return ParsedUsage(input_tokens, output_tokens, total, cached, reasoning, model)


def parse_chat_completion(body: Any) -> ParsedResult:
    """Output text and tool calls of the first choice of a `chat.completion`."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise MalformedResponseError("chat completion without a choices list")
    choices = body["choices"]
    if not choices or not isinstance(choices[0], dict):
        raise MalformedResponseError("chat completion with no choice")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedResponseError("chat completion choice without a message")
    content = message.get("content")
    tool_calls = [
        _chat_tool_call(call) for call in message.get("tool_calls") or [] if isinstance(call, dict)
    ]
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return ParsedResult(
        output_text=content if isinstance(content, str) else None,
        tool_calls=tool_calls,
        usage=parse_usage("chat", body.get("usage"), model),
    )


def _chat_tool_call(call: dict[str, Any]) -> ParsedToolCall:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    assert isinstance(function, dict)
    raw = function.get("arguments")
    arguments, arguments_raw = parse_tool_arguments(raw if isinstance(raw, str) else None)
    return ParsedToolCall(
        call_id=str(call.get("id") or ""),
        name=str(function.get("name") or ""),
        type=str(call.get("type") or "function"),
        arguments=arguments,
        arguments_raw=arguments_raw,
    )


def parse_response(body: Any) -> ParsedResult:
    """Output text (joined as openai-python's `output_text` does), function calls and hosted
    tool calls (`web_search_call`)."""
    if not isinstance(body, dict) or not isinstance(body.get("output"), list):
        raise MalformedResponseError("response without an output list")
    texts: list[str] = []
    calls: list[ParsedToolCall] = []
    for item in body["output"]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.extend(
                part["text"]
                for part in item.get("content") or []
                if isinstance(part, dict)
                and part.get("type") == "output_text"
                and isinstance(part.get("text"), str)
            )
        elif (call := _response_tool_call(item)) is not None:
            calls.append(call)
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return ParsedResult(
        output_text="".join(texts) if texts else None,
        tool_calls=calls,
        usage=parse_usage("response", body.get("usage"), model),
    )


def _response_tool_call(item: dict[str, Any]) -> ParsedToolCall | None:
    """A `function_call` item, or a hosted tool call logged like one (`action` as arguments)."""
    item_type = item.get("type")
    if item_type == "function_call":
        raw = item.get("arguments")
        arguments, arguments_raw = parse_tool_arguments(raw if isinstance(raw, str) else None)
        return ParsedToolCall(
            call_id=str(item.get("call_id") or item.get("id") or ""),
            name=str(item.get("name") or ""),
            type="function",
            arguments=arguments,
            arguments_raw=arguments_raw,
        )
    if isinstance(item_type, str) and item_type in HOSTED_TOOL_NAMES:
        return ParsedToolCall(
            call_id=str(item.get("id") or ""),
            name=HOSTED_TOOL_NAMES[item_type],
            type=item_type,
            arguments=item.get("action"),
            arguments_raw=None,
        )
    return None


def parse_result(kind: JobKind, body: Any) -> ParsedResult:
    """Parse an already decoded body (a non-streamed one, or one assembled from a stream)."""
    return parse_chat_completion(body) if kind == "chat" else parse_response(body)


def parse_success(kind: JobKind, content: bytes) -> tuple[dict[str, Any], ParsedResult]:
    """Decode a 2xx body and parse it for its kind; malformed bodies raise."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponseError(f"body is not JSON: {exc}") from exc
    try:
        parsed = parse_chat_completion(body) if kind == "chat" else parse_response(body)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # A field of the wrong type deep in the body (`"tool_calls": 5`): still the upstream's
        # malformed answer, to fail the job with, not a bug to lose the answer to.
        raise MalformedResponseError(f"unexpected shape: {type(exc).__name__}: {exc}") from exc
    return body, parsed


def parse_error_body(content: bytes) -> tuple[str | None, str | None]:
    """(type, message) from an error body; tolerant, since GMI's shape is not guaranteed."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content[:500].decode("utf-8", "replace").strip()
        return None, text or None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
        return (str(kind) if kind is not None else None, str(message) if message else None)
    if isinstance(error, str):
        return None, error
    message = body.get("message") or body.get("detail")
    return None, str(message) if message else None
