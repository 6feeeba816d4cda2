"""Request building and response parsing for both APIs."""

from __future__ import annotations

import orjson
import pytest

from worker.payloads import (
    MalformedResponseError,
    build_upstream_request,
    parse_chat_completion,
    parse_error_body,
    parse_response,
    parse_success,
    parse_tool_arguments,
)


def test_request_keeps_every_field_and_defaults_the_model() -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], "seed": 7, "x_new": {"a": 1}}
    path, body = build_upstream_request("chat", request, "openai/gpt-5.4-mini")
    assert path == "chat/completions"
    assert orjson.loads(body) == {**request, "model": "openai/gpt-5.4-mini"}
    path, body = build_upstream_request("response", {"input": "x", "model": "m/1"}, "default")
    assert path == "responses"
    assert orjson.loads(body)["model"] == "m/1"


def test_tool_arguments_keep_raw_text_when_not_json() -> None:
    assert parse_tool_arguments('{"city": "Paris"}') == ({"city": "Paris"}, None)
    assert parse_tool_arguments('{"city": "Par') == (None, '{"city": "Par')
    assert parse_tool_arguments(None) == (None, None)


def test_chat_completion_text_tool_calls_and_usage() -> None:
    body = {
        "model": "openai/gpt-5.4-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "not json"},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    parsed = parse_chat_completion(body)
    assert parsed.output_text is None
    assert [(c.call_id, c.name, c.arguments, c.arguments_raw) for c in parsed.tool_calls] == [
        ("call_1", "f", {"a": 1}, None),
        ("call_2", "g", None, "not json"),
    ]
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        10,
        5,
        15,
    )
    assert (parsed.usage.cached_tokens, parsed.usage.reasoning_tokens) == (4, 2)


def test_response_joins_output_text_and_reads_function_and_web_search_calls() -> None:
    body = {
        "model": "m",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hello, "},
                    {"type": "refusal", "refusal": "no"},
                    {"type": "output_text", "text": "world"},
                ],
            },
            {"type": "function_call", "call_id": "call_9", "name": "h", "arguments": "{}"},
            {
                "type": "web_search_call",
                "id": "ws_1",
                "status": "completed",
                "action": {"type": "search", "query": "weather"},
            },
            {"type": "file_search_call", "id": "fs_1", "status": "completed"},
        ],
        "usage": {
            "input_tokens": 3,
            "output_tokens": 4,
            "total_tokens": 7,
            "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 2},
        },
    }
    parsed = parse_response(body)
    assert parsed.output_text == "Hello, world"
    # Hosted web searches are logged like tool calls; other unknown items are skipped.
    assert [(c.call_id, c.type, c.name, c.arguments) for c in parsed.tool_calls] == [
        ("call_9", "function", "h", {}),
        ("ws_1", "web_search_call", "web_search", {"type": "search", "query": "weather"}),
    ]
    assert parsed.usage is not None
    assert (parsed.usage.cached_tokens, parsed.usage.reasoning_tokens) == (1, 2)


def test_missing_usage_is_none_and_total_is_derived_when_absent() -> None:
    body = {"choices": [{"message": {"content": "x"}}]}
    assert parse_chat_completion(body).usage is None
    body["usage"] = {"prompt_tokens": 2, "completion_tokens": 3}
    usage = parse_chat_completion(body).usage
    assert usage is not None
    assert usage.total_tokens == 5


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("chat", b"not json"),
        ("chat", b'{"choices": []}'),
        ("chat", b'{"object": "chat.completion"}'),
        ("chat", b'{"choices": [{"index": 0}]}'),
        ("response", b'{"object": "response"}'),
        ("response", b"[1, 2]"),
        # A field of the wrong type deep inside: malformed too, not a crash.
        ("chat", b'{"choices": [{"message": {"content": null, "tool_calls": 5}}]}'),
        ("response", b'{"output": [{"type": "message", "content": 1}]}'),
    ],
)
def test_malformed_success_bodies_raise(kind: str, content: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        parse_success(kind, content)  # type: ignore[arg-type]


def test_error_bodies_are_read_tolerantly() -> None:
    openai_shape = b'{"error": {"message": "bad", "type": "invalid_request_error"}}'
    assert parse_error_body(openai_shape) == ("invalid_request_error", "bad")
    assert parse_error_body(b'{"error": {"message": "x", "code": 1001}}') == ("1001", "x")
    assert parse_error_body(b'{"message": "flat"}') == (None, "flat")
    assert parse_error_body(b'{"error": "plain"}') == (None, "plain")
    assert parse_error_body(b"<html>502 Bad Gateway</html>") == (
        None,
        "<html>502 Bad Gateway</html>",
    )
    assert parse_error_body(b"") == (None, None)
