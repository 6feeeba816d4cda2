"""Deterministic token accounting for simulated answers (pure).

The rules are simple on purpose, so tests can predict every number:
tokens(x) = ceil(len(bytes of x) / 4); cached = (prompt // 2) rounded down to a multiple of 4;
reasoning tokens come from the requested effort and are counted inside the output tokens.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

# Reasoning tokens per choice, by effort; "none" means the model did not think at all.
REASONING_TOKENS = {
    "none": 0,
    "minimal": 8,
    "low": 16,
    "medium": 32,
    "high": 64,
    "xhigh": 128,
    "max": 256,
}
_DEFAULT_REASONING_TOKENS = REASONING_TOKENS["medium"]


def count_tokens(value: str | bytes) -> int:
    """Return the simulated token count of a text: one token per 4 bytes, rounded up."""
    data = value.encode() if isinstance(value, str) else value
    return math.ceil(len(data) / 4)


def count_json_tokens(value: Any) -> int:
    """Return the token count of a JSON value as orjson serialises it (compact, key order kept)."""
    return count_tokens(orjson.dumps(value))


def cached_tokens(prompt_tokens: int) -> int:
    """Return the simulated prompt-cache hit: half the prompt, rounded down to a multiple of 4."""
    return (prompt_tokens // 2) // 4 * 4


def reasoning_tokens(effort: object) -> int:
    """Return the reasoning tokens one choice spends for a `reasoning_effort` value."""
    if effort is None:
        return 0
    if isinstance(effort, str):
        return REASONING_TOKENS.get(effort, _DEFAULT_REASONING_TOKENS)
    return _DEFAULT_REASONING_TOKENS


def chat_usage(prompt_tokens: int, visible_tokens: int, reasoning: int) -> dict[str, Any]:
    """Return a complete chat `CompletionUsage` (reasoning counted inside completion tokens)."""
    completion = visible_tokens + reasoning
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens(prompt_tokens),
            "audio_tokens": 0,
            "cache_write_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def response_usage(input_tokens: int, visible_tokens: int, reasoning: int) -> dict[str, Any]:
    """Return a complete Responses `ResponseUsage` (every field the schema requires)."""
    output = visible_tokens + reasoning
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": cached_tokens(input_tokens),
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output,
    }
