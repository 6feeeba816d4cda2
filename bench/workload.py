"""The one call every case makes: the same chat body, sent straight upstream or wrapped in a job;
plain, or streamed (`"stream": true`: the answer comes as server-sent events)."""

from __future__ import annotations

from typing import Any

from worker.simulator.answers import build_chat_completion
from worker.simulator.streams import chat_frames

MODEL = "openai/gpt-5.4-mini"
CHAT_PATH = "chat/completions"
# The start of the first streamed chat frame that carries text (the role frame before it has
# `"delta":{"role":…`): seen in the body, it marks the time to first token.
FIRST_TOKEN_MARKER = b'"delta":{"content":"'


def chat_request(stream: bool = False) -> dict[str, Any]:
    """The OpenAI-compatible body of one call (the simulator answers ~650 bytes to it)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
    return body


def upstream_request(stream: bool = False) -> dict[str, Any]:
    """The body as sent upstream: a streamed chat asks for its usage chunk, as gmiq's worker
    does (`payloads.build_upstream_request`), so every case reads the same stream."""
    body = chat_request(stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def stream_pauses() -> int:
    """The simulator's pauses in the stream of this call (one between consecutive frames)."""
    completion = build_chat_completion(upstream_request(stream=True), 0.0)
    return len(chat_frames(completion, include_usage=True)) - 1


def job_submission(run_tag: str, stream: bool = False) -> dict[str, Any]:
    """The `POST /v1/jobs` body for that call, tagged so the run can count its own jobs."""
    return {"kind": "chat", "request": chat_request(stream), "metadata": {"bench_run": run_tag}}
