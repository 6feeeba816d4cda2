"""SSE decoding and stream assembly: a streamed answer becomes the object a plain call returns."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.payloads import build_upstream_request, continue_request
from worker.simulator.answers import build_chat_completion, build_response
from worker.simulator.streams import break_frames, chat_frames, response_frames
from worker.sse import SSEDecoder, SSEEvent, encode_event
from worker.stream_parsing import (
    ChatStreamAssembler,
    ResponseStreamAssembler,
    StreamError,
    StreamUpdate,
    assemble_stream,
    measure_attempt,
    merge_updates,
)

NOW = 1_750_000_000.0
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
    for name in ("get_weather", "get_forecast")
]
QUESTION = [{"role": "user", "content": "Weather in Paris for the next three days, please?"}]


def rechunk(frames: list[bytes], size: int) -> list[bytes]:
    """The same body cut into reads of `size` bytes, ignoring frame boundaries."""
    body = b"".join(frames)
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_decoder_handles_any_chunking_line_endings_comments_and_multiline_data() -> None:
    body = b": hello\r\nevent: a\r\ndata: one\r\ndata: two\r\n\r\nid: 7\rdata: x\r\rdata:y\n\n"
    expected = [SSEEvent("one\ntwo", "a"), SSEEvent("x", None, "7"), SSEEvent("y", None, "7")]
    for size in (1, 2, 3, 7, len(body)):
        decoder = SSEDecoder()
        events = [event for chunk in rechunk([body], size) for event in decoder.feed(chunk)]
        assert events + decoder.close() == expected


def test_decoder_close_flushes_an_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == [SSEEvent("[DONE]")]
    assert decoder.close() == []


def test_encoded_events_decode_back_and_the_last_id_carries_over() -> None:
    frame = encode_event("text.delta", b'{"a":1}', "1-2") + encode_event(None, b"2")
    assert SSEDecoder().feed(frame) == [
        SSEEvent('{"a":1}', "text.delta", "1-2"),
        SSEEvent("2", None, "1-2"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": QUESTION},
        {"messages": QUESTION, "tools": TOOLS},
        {"messages": QUESTION, "n": 3},
        {"messages": QUESTION, "tools": TOOLS, "n": 2, "parallel_tool_calls": False},
        {"messages": QUESTION, "max_completion_tokens": 3},
    ],
    ids=["text", "parallel_tools", "three_choices", "tools_per_choice", "length"],
)
@pytest.mark.parametrize("size", [1, 13, 4096])
def test_chat_chunks_assemble_into_the_plain_completion(body: dict[str, Any], size: int) -> None:
    completion = build_chat_completion({**body, "model": "m/1"}, NOW)
    frames = chat_frames(completion, include_usage=True)
    assert assemble_stream("chat", rechunk(frames, size)) == completion


def test_chat_tool_call_fragments_are_joined_by_index_and_announced_once() -> None:
    completion = build_chat_completion({"messages": QUESTION, "tools": TOOLS, "model": "m"}, NOW)
    assembler = ChatStreamAssembler()
    updates = [u for frame in chat_frames(completion, True) for u in assembler.feed(frame)]
    calls = completion["choices"][0]["message"]["tool_calls"]
    started = [u for u in updates if u.type == "tool_call.started"]
    assert [(u.call_index, u.call_id, u.name) for u in started] == [
        (n, call["id"], call["function"]["name"]) for n, call in enumerate(calls)
    ]
    fragments = [u for u in updates if u.type == "tool_call.delta"]
    assert len(fragments) > 2 * len(calls)  # many fragments, interleaved
    for n, call in enumerate(calls):
        joined = "".join(u.delta for u in fragments if u.call_index == n)
        assert joined == call["function"]["arguments"]
    assert assembler.finish() == completion


def test_chat_keeps_the_first_id_and_name_when_a_server_repeats_them() -> None:
    frames = [
        encode_event(None, orjson.dumps(chunk))
        for chunk in (
            {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "id": "call_1", "function": {"name": "f"}},
                            ]
                        },
                    }
                ]
            },
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "function": {"name": "f", "arguments": '{"a":'},
                                },
                            ]
                        },
                    }
                ]
            },
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
                    }
                ]
            },
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        )
    ]
    result = assemble_stream("chat", [*frames, b"data: [DONE]\n\n"])
    message = result["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert message["content"] is None
    assert "usage" not in result


def test_chat_reasoning_content_and_text_are_seen_and_kept() -> None:
    chunks = [
        {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    ]
    assembler = ChatStreamAssembler()
    updates = [u for c in chunks for u in assembler.feed(encode_event(None, orjson.dumps(c)))]
    assert [(u.type, u.delta) for u in updates] == [
        ("reasoning.delta", "hmm"),
        ("text.delta", "Hi"),
    ]
    # No [DONE], but every choice finished and usage came: the answer is whole.
    result = assembler.finish()
    assert result["choices"][0]["message"]["reasoning_content"] == "hmm"
    assert result["choices"][0]["message"]["content"] == "Hi"
    assert result["usage"] == {"prompt_tokens": 1, "completion_tokens": 2}


@pytest.mark.parametrize("reasoning", [None, {"effort": "low", "summary": "auto"}])
@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": [{"type": "function", **TOOLS[0]["function"]}]}, {"max_output_tokens": 2}],
    ids=["text", "function_call", "incomplete"],
)
@pytest.mark.parametrize("size", [1, 4096])
def test_response_events_assemble_into_the_plain_response(
    reasoning: dict[str, Any] | None, extra: dict[str, Any], size: int
) -> None:
    body: dict[str, Any] = {"model": "m", "input": "Weather in Paris?", **extra}
    if reasoning:
        body["reasoning"] = reasoning
    response = build_response(body, NOW)
    assert assemble_stream("response", rechunk(response_frames(response), size)) == response


def test_response_updates_name_calls_and_hosted_searches() -> None:
    body = {"model": "m", "input": "x", "tools": [{"type": "function", **TOOLS[0]["function"]}]}
    response = build_response(body, NOW)
    assembler = ResponseStreamAssembler()
    updates = [u for frame in response_frames(response) for u in assembler.feed(frame)]
    call = response["output"][0]
    assert updates[0] == StreamUpdate(
        "tool_call.started", 0, call_id=call["call_id"], name=call["name"], call_type="function"
    )
    assert "".join(u.delta for u in updates[1:]) == call["arguments"]

    search = {"id": "ws_1", "type": "web_search_call", "status": "in_progress", "action": {}}
    added = {"type": "response.output_item.added", "output_index": 2, "item": search}
    assert ResponseStreamAssembler().feed(encode_event(None, orjson.dumps(added))) == [
        StreamUpdate(
            "tool_call.started", 2, call_id="ws_1", name="web_search", call_type="web_search_call"
        )
    ]


def test_response_output_falls_back_to_done_items() -> None:
    item = {"type": "message", "id": "m", "content": []}
    events = [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {"id": "r", "output": []}},
        {"type": "response.output_text.delta", "delta": "ignored after the end"},
    ]
    frames = [encode_event(e["type"], orjson.dumps(e)) for e in events]
    assert assemble_stream("response", [*frames, b"data: [DONE]\n\n"]) == {
        "id": "r",
        "output": [item],
    }


@pytest.mark.parametrize("kind", ["chat", "response"])
def test_a_stream_cut_before_its_end_is_a_retryable_error(kind: str) -> None:
    body = {"model": "m", "messages": QUESTION, "input": "hi"}
    frames = (
        chat_frames(build_chat_completion(body, NOW), True)
        if kind == "chat"
        else response_frames(build_response(body, NOW))
    )
    with pytest.raises(StreamError) as cut:
        assemble_stream(kind, frames[:-1] if kind == "response" else frames[:-2])
    assert (cut.value.error_type, cut.value.retryable) == ("stream_interrupted", True)
    with pytest.raises(StreamError) as garbled:
        assemble_stream(kind, break_frames(frames))
    assert (garbled.value.error_type, garbled.value.retryable) == ("malformed_stream", True)


@pytest.mark.parametrize(
    ("kind", "event", "error_type", "retryable"),
    [
        ("chat", {"error": {"message": "boom", "type": "server_error"}}, "server_error", True),
        (
            "chat",
            {"error": {"message": "bad", "type": "invalid_request_error"}},
            "invalid_request_error",
            False,
        ),
        ("chat", {"error": {"message": "busy", "code": 503}}, "503", True),
        ("chat", {"error": "plain"}, "stream_error", True),
        (
            "response",
            {"type": "error", "code": "rate_limit_exceeded", "message": "slow"},
            "rate_limit_exceeded",
            True,
        ),
        ("response", {"type": "error", "code": None, "message": "?"}, "stream_error", True),
        (
            "response",
            {
                "type": "response.failed",
                "response": {"error": {"code": "invalid_prompt", "message": "no"}},
            },
            "invalid_prompt",
            False,
        ),
        ("chat", [1, 2], "malformed_stream", True),
    ],
)
def test_errors_inside_a_stream_are_classified(
    kind: str, event: Any, error_type: str, retryable: bool
) -> None:
    with pytest.raises(StreamError) as raised:
        assemble_stream(kind, [encode_event(None, orjson.dumps(event))])
    assert (raised.value.error_type, raised.value.retryable) == (error_type, retryable)


def test_merge_joins_consecutive_deltas_of_the_same_stream_only() -> None:
    updates = [
        StreamUpdate("text.delta", 0, "a"),
        StreamUpdate("text.delta", 0, "b"),
        StreamUpdate("text.delta", 1, "c"),
        StreamUpdate("tool_call.started", 0, call_index=0, call_id="x", name="f"),
        StreamUpdate("tool_call.delta", 0, "{", 0),
        StreamUpdate("tool_call.delta", 0, "}", 0),
        StreamUpdate("tool_call.delta", 0, "[", 1),
    ]
    assert merge_updates(updates) == [
        StreamUpdate("text.delta", 0, "ab"),
        StreamUpdate("text.delta", 1, "c"),
        StreamUpdate("tool_call.started", 0, call_index=0, call_id="x", name="f"),
        StreamUpdate("tool_call.delta", 0, "{}", 0),
        StreamUpdate("tool_call.delta", 0, "[", 1),
    ]


def test_attempt_timing() -> None:
    streamed = measure_attempt(10.0, 10.5, 12.5, 100)
    assert (streamed.first_token_s, streamed.tokens_per_s) == (0.5, 50.0)
    # Everything in one read: the rate is over the whole call.
    assert measure_attempt(10.0, 12.0, 12.0, 100).tokens_per_s == 50.0
    assert measure_attempt(0.0, None, 2.0, 10).first_token_s is None
    assert measure_attempt(0.0, None, 2.0, 10).tokens_per_s == 5.0
    assert measure_attempt(0.0, 1.0, 2.0, None).tokens_per_s is None
    assert measure_attempt(0.0, None, 0.0, 10).tokens_per_s is None


def test_streamed_chat_requests_ask_for_usage_and_keep_other_options() -> None:
    request = {
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
    }
    _, body = build_upstream_request("chat", request, "m")
    assert orjson.loads(body)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    _, body = build_upstream_request("response", {"input": "x", "stream": True}, "m")
    assert "stream_options" not in orjson.loads(body)
    _, body = build_upstream_request("chat", {"messages": QUESTION}, "m")
    assert "stream_options" not in orjson.loads(body)


def test_follow_ups_continue_their_parent() -> None:
    parent = build_chat_completion({"messages": QUESTION, "tools": TOOLS, "model": "m"}, NOW)
    message = parent["choices"][0]["message"]
    answers = [
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
        for call in message["tool_calls"]
    ]
    request = continue_request("chat", {"messages": answers}, {"messages": QUESTION}, parent)
    assert request["messages"] == [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        *answers,
    ]
    chained = continue_request("response", {"input": "more"}, {}, {"id": "resp_1"})
    assert chained == {"input": "more", "previous_response_id": "resp_1"}
    for kind, given, result, reason in [
        ("response", {"previous_response_id": "resp_2"}, {"id": "resp_1"}, "conflicts"),
        ("response", {}, {"output": []}, "no upstream response id"),
        ("chat", {"messages": []}, {"choices": []}, "no assistant message"),
        ("chat", {"messages": []}, None, "no stored result"),
    ]:
        with pytest.raises(ValueError, match=reason):
            continue_request(kind, given, {"messages": []}, result)  # type: ignore[arg-type]
