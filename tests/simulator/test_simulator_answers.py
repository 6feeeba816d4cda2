"""The deterministic rules behind simulated answers, checked on the pure builders (no I/O)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest

from worker.simulator.answers import build_chat_completion, build_response
from worker.simulator.streams import chat_frames, split_arguments, split_text
from worker.simulator.tool_arguments import build_arguments

NOW = 1_750_000_000.0
MODEL = "zai-org/GLM-5.1-FP8"


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return build_chat_completion({"model": MODEL, "messages": messages, **extra}, NOW)


def function(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name}
    if parameters is not None:
        spec["parameters"] = parameters
    return {"type": "function", "function": spec}


def called(body: dict[str, Any], choice: int = 0) -> list[str]:
    calls = body["choices"][choice]["message"].get("tool_calls") or []
    return [call["function"]["name"] for call in calls]


USER = [{"role": "user", "content": "Book a table for two"}]
TOOLS = [function("alpha"), function("beta"), function("gamma")]


def test_arguments_follow_the_json_schema_types() -> None:
    parameters = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "urgent": {"type": "boolean"},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
            "tags": {"type": "array", "items": {"type": "integer"}},
            "where": {"type": "object", "properties": {"city": {"type": "string"}}},
            "maybe": {"type": ["null", "integer"]},
            "bounded": {"type": "integer", "minimum": 100},
        },
    }

    arguments = build_arguments(parameters, "Book a table   for two\nplease")

    assert arguments == {
        "name": "Book a table for two please",
        "count": 42,
        "ratio": 1.5,
        "urgent": True,
        "mode": "fast",
        "tags": [42],
        "where": {"city": "Book a table for two please"},
        "maybe": 42,
        "bounded": 100,
    }


def test_arguments_hold_only_required_properties_when_required_is_given() -> None:
    parameters = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["b"],
    }

    assert build_arguments(parameters, "x") == {"b": 42}


def test_arguments_resolve_local_refs_and_cut_strings_to_32_chars() -> None:
    parameters = {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": {"type": "object", "properties": {"label": {"type": "string"}}}},
    }

    arguments = build_arguments(parameters, "y" * 100)

    assert arguments == {"item": {"label": "y" * 32}}
    assert build_arguments(parameters, "") == {"item": {"label": "sim"}}
    assert build_arguments(None, "x") == {}


def test_one_function_tool_gets_one_call_with_a_call_id() -> None:
    body = chat(USER, tools=[function("alpha", {"type": "object", "properties": {}})])

    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert len(call["id"]) == len("call_") + 24
    assert call["function"] == {"name": "alpha", "arguments": "{}"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, ["alpha", "beta"]),
        ({"parallel_tool_calls": False}, ["alpha"]),
        ({"tool_choice": "none"}, []),
        ({"tool_choice": {"type": "function", "function": {"name": "gamma"}}}, ["gamma"]),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [{"type": "function", "function": {"name": "beta"}}],
                    },
                }
            },
            ["beta"],
        ),
    ],
)
def test_tool_choice_and_parallel_tool_calls_pick_the_called_functions(
    extra: dict[str, Any], expected: list[str]
) -> None:
    assert called(chat(USER, tools=TOOLS, **extra)) == expected


def test_after_a_tool_result_the_model_answers_in_text_unless_a_call_is_required() -> None:
    history: list[dict[str, Any]] = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "alpha", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]

    free = chat(history, tools=TOOLS)
    forced = chat(history, tools=TOOLS, tool_choice="required")

    assert called(free) == []
    assert free["choices"][0]["message"]["content"] == "Simulated answer to: Book a table for two"
    assert called(forced) == ["alpha", "beta"]


def test_text_quotes_the_first_200_chars_of_the_last_user_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "z" * 300}]},
    ]

    content = chat(messages)["choices"][0]["message"]["content"]

    assert content == "Simulated answer to: " + "z" * 200


def test_chat_usage_follows_the_documented_formula() -> None:
    messages = [{"role": "user", "content": "q" * 100}]

    body = chat(messages, reasoning_effort="low", n=2)

    usage = body["usage"]
    prompt = math.ceil(len(orjson.dumps(messages)) / 4)
    visible = math.ceil(len(body["choices"][0]["message"]["content"].encode()) / 4)
    assert usage["prompt_tokens"] == prompt
    assert usage["prompt_tokens_details"]["cached_tokens"] == (prompt // 2) // 4 * 4 > 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2 * 16
    assert usage["completion_tokens"] == 2 * visible + 2 * 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_tool_call_tokens_count_name_and_arguments() -> None:
    body = chat(USER, tools=[function("alpha", {"type": "object", "properties": {}})])

    assert body["usage"]["completion_tokens"] == math.ceil(len("alpha{}") / 4)


def test_equal_requests_get_equal_answers_and_different_ones_differ() -> None:
    first = chat(USER, tools=TOOLS)
    again = chat(USER, tools=TOOLS)
    other = chat([{"role": "user", "content": "Something else"}], tools=TOOLS)

    assert first == again
    assert first["id"] != other["id"]
    assert (
        first["choices"][0]["message"]["tool_calls"][0]["id"]
        != (other["choices"][0]["message"]["tool_calls"][0]["id"])
    )


def test_streaming_flags_do_not_change_the_answer() -> None:
    plain = chat(USER)
    streamed = chat(USER, stream=True, stream_options={"include_usage": True})

    assert plain == streamed


def test_n_choices_have_distinct_tool_call_ids() -> None:
    body = chat(USER, tools=TOOLS, n=3)

    ids = [call["id"] for choice in body["choices"] for call in choice["message"]["tool_calls"]]
    assert len(ids) == len(set(ids)) == 6


def test_max_tokens_truncates_text_and_reports_length() -> None:
    body = chat(USER, max_tokens=2)

    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "Simulated answer to: "[:8]
    assert body["usage"]["completion_tokens"] == 2


def test_json_schema_response_format_yields_matching_json() -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}

    content = chat(USER, response_format=response_format)["choices"][0]["message"]["content"]

    assert json.loads(content) == {"score": 42}


def test_responses_function_calls_use_flat_tools_and_completed_status() -> None:
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
            },
        }
    ]

    body = build_response({"model": MODEL, "input": "find cats", "tools": tools}, NOW)

    (item,) = body["output"]
    assert item["type"] == "function_call"
    assert item["id"].startswith("fc_")
    assert item["call_id"].startswith("call_")
    assert (item["name"], json.loads(item["arguments"]), item["status"]) == (
        "lookup",
        {"q": "find cats"},
        "completed",
    )
    assert body["tools"][0]["strict"] is True
    assert body["tools"][0]["description"] is None


def test_responses_usage_counts_input_and_instructions() -> None:
    conversation = [{"role": "user", "content": "x" * 64}]

    body = build_response(
        {
            "model": MODEL,
            "input": conversation,
            "instructions": "Be terse.",
            "reasoning": {"effort": "high"},
        },
        NOW,
    )

    usage = body["usage"]
    expected_input = math.ceil(len(orjson.dumps(conversation)) / 4) + math.ceil(
        len("Be terse.") / 4
    )
    assert usage["input_tokens"] == expected_input
    assert usage["input_tokens_details"] == {
        "cached_tokens": (expected_input // 2) // 4 * 4,
        "cache_write_tokens": 0,
    }
    assert usage["output_tokens_details"]["reasoning_tokens"] == 64
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["reasoning"] == {"effort": "high", "summary": None}
    assert body["output"][0]["summary"] == []


def test_responses_echo_request_settings() -> None:
    body = build_response(
        {
            "model": MODEL,
            "input": "hi",
            "temperature": 0.2,
            "top_p": 0.5,
            "parallel_tool_calls": False,
            "previous_response_id": "resp_prev",
            "max_output_tokens": 500,
            "tool_choice": "none",
        },
        NOW,
    )

    assert (body["temperature"], body["top_p"], body["parallel_tool_calls"]) == (0.2, 0.5, False)
    assert body["previous_response_id"] == "resp_prev"
    assert body["max_output_tokens"] == 500
    assert body["tool_choice"] == "none"
    assert body["created_at"] == body["completed_at"] == int(NOW)


def test_text_and_argument_splits_rebuild_their_input() -> None:
    text = "Simulated answer to:  several   spaced words\n"
    arguments = json.dumps({"city": "Paris", "days": 3})

    assert "".join(split_text(text)) == text
    assert len(split_text(text)) > 3
    assert "".join(split_arguments(arguments)) == arguments
    assert max(len(piece) for piece in split_arguments(arguments)) <= 8


def test_n_choices_stream_each_choice_with_its_own_index() -> None:
    body = chat(USER, n=2)

    frames = chat_frames(body, include_usage=False)

    chunks = [json.loads(frame[len(b"data: ") :]) for frame in frames[:-1]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert (
            "".join(c["delta"].get("content") or "" for c in mine)
            == (body["choices"][index]["message"]["content"])
        )
        assert mine[-1]["finish_reason"] == "stop"
