"""Job submission, the job view returned to pollers, and the job states."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api_contracts.webhooks import DeliveryView, decode_webhook_secret

JobKind = Literal["chat", "response"]
JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]

TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
CHAT_ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})


class InvalidFieldError(ValueError):
    """A validation failure deep inside `request`, carrying the dotted path of the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


# A week: longer than any single LLM call or reasonable wait, short enough to catch typos in ms.
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class JobTimeouts(BaseModel):
    """Per-job limits, each falling back to the deployment's setting when absent.

    `connect_s` and `read_s` bound one socket operation (reasoning models can think for minutes
    before the first byte, so raise `read_s` for them); `call_s` bounds one whole call, however
    the bytes trickle in; `total_s` bounds the job from submission, queueing and retries
    included: past it the job fails with `deadline_exceeded`."""

    model_config = ConfigDict(extra="forbid")

    connect_s: float | None = Field(default=None, gt=0, le=600)
    read_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    call_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    total_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)


class JobSubmitRequest(BaseModel):
    """What a caller sends to `POST /v1/jobs` (and what Python producers pass to `submit`)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    # The OpenAI-compatible body, passed upstream as given (unknown fields included).
    request: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    callback_url: str | None = Field(default=None, max_length=2048)
    # Signs this job's events instead of the operator's secrets; stored encrypted, never shown.
    callback_secret: SecretStr | None = None
    # Continue a succeeded job: a response job chains on its upstream response
    # (`previous_response_id`); a chat job gets its messages and assistant turn prepended.
    parent_job_id: UUID | None = None
    timeouts: JobTimeouts | None = None

    @model_validator(mode="before")
    @classmethod
    def _hide_callback_secret(cls, data: Any) -> Any:
        # Wrapped before validation, so a refused secret never appears in an error message.
        if isinstance(data, dict) and isinstance(data.get("callback_secret"), str):
            return {**data, "callback_secret": SecretStr(data["callback_secret"])}
        return data

    @field_validator("request")
    @classmethod
    def _check_request_for_kind(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind == "chat":
            check_chat_request(value)
        elif kind == "response":
            check_response_request(value)
        return value

    @field_validator("request", "metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        check_storable(value, str(info.field_name))
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # Pydantic refuses a lone surrogate in a `str` field itself; not NUL, which Postgres
        # cannot store.
        if value is not None and "\x00" in value:
            raise ValueError(_NUL)
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        if value is not None and "\x00" in value:
            raise ValueError(_NUL)
        return value

    @field_validator("callback_secret")
    @classmethod
    def _callback_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_webhook_secret(value.get_secret_value())
        return value


_NUL = "must not contain the NUL character (\\u0000)"
# JSON numbers that Postgres' jsonb and our JSON encoder (orjson) both take: 64-bit integers.
_INT_MIN, _INT_END = -(2**63), 2**64
# orjson stops at 255 levels, and a job's request travels inside two more (the batch it is
# written with, the message it is published in).
MAX_DEPTH = 200


def check_storable(value: Any, path: str) -> None:
    """Refuse what Postgres or our JSON encoder cannot store, naming where it is: anything but
    JSON values (objects with string keys, arrays, strings, numbers, booleans, null), the NUL
    character or a lone surrogate in a string or key, an integer beyond 64 bits, NaN or an
    infinity (which Python's JSON parser accepts and no JSON document may hold), nesting deeper
    than `MAX_DEPTH`. The walk over the whole value takes about as long as parsing it; the path
    is worked out only for a value refused."""
    if not _storable(value):
        _name_unstorable(value, path, 0)


def _storable(value: Any) -> bool:
    # Exact types first: this runs on every submission, over every value in it.
    stack: list[tuple[Any, int]] = [(value, 0)]
    items: Iterable[Any]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= MAX_DEPTH:
                return False
            for key in node:  # `_text_ok`, inlined: a call per key cost a third of the walk
                if not isinstance(key, str) or "\x00" in key or not (key.isascii() or _utf8(key)):
                    return False
            items = node.values()
        elif isinstance(node, list | tuple):
            if depth >= MAX_DEPTH:
                return False
            items = node
        else:
            items = (node,)
            depth -= 1
        for item in items:
            kind = type(item)
            if kind is str:
                if "\x00" in item or not (item.isascii() or _utf8(item)):
                    return False
            elif kind is dict or kind is list or isinstance(item, dict | list | tuple):
                stack.append((item, depth + 1))
            elif kind is int:
                if not _INT_MIN <= item < _INT_END:
                    return False
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif not (item is None or kind is bool or _scalar_ok(item)):
                return False
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _text_ok(text: object) -> bool:
    return isinstance(text, str) and "\x00" not in text and (text.isascii() or _utf8(text))


def _scalar_ok(item: object) -> bool:
    if item is None or isinstance(item, bool):
        return True
    if isinstance(item, str):
        return _text_ok(item)
    if isinstance(item, int):
        return _INT_MIN <= item < _INT_END
    if isinstance(item, float):
        return math.isfinite(item)
    return False


def _name_unstorable(node: Any, where: str, depth: int) -> None:
    if isinstance(node, dict | list | tuple) and depth >= MAX_DEPTH:
        raise InvalidFieldError(where, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key, item in node.items():
            if not isinstance(key, str):
                raise InvalidFieldError(where, f"has a key that is not a string: {key!r}")
            if not _text_ok(key):
                raise InvalidFieldError(where, f"has a key that {_refusal(key)}")
            _name_unstorable(item, f"{where}.{key}", depth + 1)
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            _name_unstorable(item, f"{where}[{index}]", depth + 1)
    elif not _scalar_ok(node):
        raise InvalidFieldError(where, _refusal(node))


def _refusal(node: object) -> str:
    if not isinstance(node, str | int | float | type(None)):
        return "must be a JSON value (object, array, string, number, boolean or null)"
    if isinstance(node, str):
        if "\x00" in node:
            return _NUL
        # Half of a surrogate pair alone: Python's JSON parser takes it, UTF-8 cannot hold it.
        return "must not contain a lone surrogate (\\ud800-\\udfff)"
    if isinstance(node, int):
        return "must be an integer of at most 64 bits"
    return "must be a finite number (not NaN or Infinity)"


def _check_model(request: dict[str, Any]) -> None:
    model = request.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidFieldError("request.model", "must be a non-empty string")
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidFieldError("request.stream", "must be a boolean")


def check_chat_request(request: dict[str, Any]) -> None:
    """Refuse chat bodies that upstream would certainly reject, naming the field."""
    _check_model(request)
    messages = request.get("messages")
    if messages is None:
        raise InvalidFieldError("request.messages", "is required for kind 'chat'")
    if not isinstance(messages, list) or not messages:
        raise InvalidFieldError("request.messages", "must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidFieldError(f"request.messages[{index}]", "must be an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidFieldError(
                f"request.messages[{index}].role", f"must be one of {sorted(CHAT_ROLES)}"
            )


def check_response_request(request: dict[str, Any]) -> None:
    """Refuse Responses bodies with no usable `input`, naming the field."""
    _check_model(request)
    given = request.get("input")
    if given is None and request.get("previous_response_id") is None:
        raise InvalidFieldError("request.input", "is required for kind 'response'")
    if given is not None and not isinstance(given, str | list):
        raise InvalidFieldError("request.input", "must be a string or a list of input items")


class ToolCallView(BaseModel):
    """One call the model asked for; `arguments` is an object when the model sent valid JSON."""

    call_id: str
    name: str
    type: str = "function"
    arguments: Any
    arguments_raw: str | None = None


class UsageView(BaseModel):
    """Token usage under the same names for both APIs."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    model: str | None = None


class ErrorInfo(BaseModel):
    """Why a job failed: the upstream's error type and message, and its HTTP status if any."""

    type: str
    message: str
    status_code: int | None = None


class AttemptView(BaseModel):
    """One call to the upstream (or one lost with its worker), and what was decided after it."""

    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: Literal["running", "succeeded", "failed", "retry", "lost", "cancelled"]
    status_code: int | None
    error_type: str | None
    error_message: str | None
    delay_s: float | None
    delay_reason: str | None
    # Seconds from the request to the first streamed delta, and output tokens per second.
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None


class JobView(BaseModel):
    """What pollers see for one job."""

    id: UUID
    kind: JobKind
    status: JobStatus
    model: str
    priority: Priority
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt_count: int
    next_attempt_at: datetime | None
    attempts: list[AttemptView] = Field(default_factory=list)
    output_text: str | None
    tool_calls: list[ToolCallView]
    usage: UsageView | None
    result: dict[str, Any] | None
    error: ErrorInfo | None
    metadata: dict[str, Any]
    idempotency_key: str | None = None
    callback_url: str | None = None
    cancel_requested: bool = False
    # The webhook events of this job (one once it has ended, when it has a callback_url).
    deliveries: list[DeliveryView] = Field(default_factory=list)
    # The request as stored: the caller's body (the `model` it runs with is above) and, for a
    # follow-up (`parent_job_id`), the parent's history expanded into it. Optional, so consumers
    # of older views keep working.
    request: dict[str, Any] | None = None
    # The caller's own limits (absent ones are the deployment's) and when the job must be done by.
    timeouts: JobTimeouts | None = None
    deadline_at: datetime | None = None
    # The job this one continues (`parent_job_id` of the submission); None for a first turn.
    parent_job_id: UUID | None = None


class JobListView(BaseModel):
    """A page of jobs, newest first, with the cursor of the next page."""

    data: list[JobView]
    next_cursor: str | None
