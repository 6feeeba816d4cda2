"""The one call every case makes: the same chat body, sent straight upstream or wrapped in a job."""

from __future__ import annotations

from typing import Any

MODEL = "openai/gpt-5.4-mini"
CHAT_PATH = "chat/completions"


def chat_request() -> dict[str, Any]:
    """The OpenAI-compatible body of one call (the simulator answers ~650 bytes to it)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 32,
    }


def job_submission(run_tag: str) -> dict[str, Any]:
    """The `POST /v1/jobs` body for that call, tagged so the run can count its own jobs."""
    return {"kind": "chat", "request": chat_request(), "metadata": {"bench_run": run_tag}}
