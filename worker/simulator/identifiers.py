"""Ids derived from a request's content, so equal requests get equal answers (pure)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Keys that change how an answer is delivered, not what it says; a streamed answer must carry
# the same ids as the non-streamed one so tests (and clients) can compare them.
_DELIVERY_KEYS = frozenset({"stream", "stream_options"})
_ID_HEX_LENGTH = 24


def request_digest(body: dict[str, Any]) -> str:
    """Return a stable hex digest of a request body, ignoring delivery-only keys."""
    content = {key: value for key, value in body.items() if key not in _DELIVERY_KEYS}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def derive_id(digest: str, prefix: str, *parts: object) -> str:
    """Return `prefix` + hex derived from the request digest and the object's position."""
    seed = ":".join([digest, prefix, *(str(part) for part in parts)])
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:_ID_HEX_LENGTH]
