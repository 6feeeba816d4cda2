"""The simulator's ASGI app: GMI Cloud's OpenAI-compatible /v1 API on Starlette.

Each model call is recorded, authenticated, given its planned fault (script, `x-sim-fault`
header, or seeded dice, decided on arrival so order is deterministic), delayed with
`asyncio.sleep`, and then answered. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.simulator import errors
from worker.simulator.answers import build_chat_completion, build_response
from worker.simulator.config import SimulatorConfig
from worker.simulator.control import control_routes
from worker.simulator.faults import ScriptedAnswer, ScriptError, parse_fault_header
from worker.simulator.state import SimulatorState
from worker.simulator.streams import break_frames, chat_frames, response_frames
from worker.simulator.transport import (
    JSON_MEDIA_TYPE,
    SSE_MEDIA_TYPE,
    CutResponse,
    json_response,
    sse_response,
    wait_for_disconnect,
)
from worker.simulator.validation import check_chat_request, check_responses_request

LATENCY_HEADER = "x-sim-latency-ms"
FAULT_HEADER = "x-sim-fault"
# Fixed, so GET /v1/models answers identically on every run.
_MODEL_CREATED = 1_700_000_000
# Shaped like OpenAI's; clients that parse rate-limit headers get something realistic.
_RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "10000000",
    "x-ratelimit-remaining-tokens": "9999000",
    "x-ratelimit-reset-tokens": "6ms",
}
_NOT_JSON = object()


class Endpoint(Enum):
    """The two model endpoints."""

    CHAT = "chat"
    RESPONSES = "responses"


@dataclass(frozen=True)
class Prepared:
    """An answer before delivery: a JSON body or SSE frames, so faults can break either."""

    status: int
    payload: bytes = b""
    frames: tuple[bytes, ...] | None = None


def create_app(config: SimulatorConfig) -> Starlette:
    """Return a simulator ASGI app with its own script, fault dice and request log."""
    api = _Api(SimulatorState(config))
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.retrieve_model, methods=["GET"]),
        *control_routes(api.state),
    ]
    if config.enable_responses:
        routes.append(Route("/v1/responses", api.responses, methods=["POST"]))
    handlers = {404: _unknown_url, 405: _unknown_url}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.simulator = api.state
    return app


async def _unknown_url(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return json_response(errors.unknown_url(request.method, request.url.path), status)


class _Api:
    """The /v1 route handlers over one SimulatorState."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.config = state.config

    async def chat_completions(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.CHAT)

    async def responses(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        if refused := await self._admit(request):
            return refused
        body = {"object": "list", "data": [_model(model_id) for model_id in self.config.model_ids]}
        return self._counted(request, json_response(body, 200, _base_headers()))

    async def retrieve_model(self, request: Request) -> Response:
        if refused := await self._admit(request):
            return refused
        model_id = request.path_params["model"]
        if model_id not in self.config.model_ids:
            body = errors.model_not_found(model_id)
            return self._counted(request, json_response(body, 404, _base_headers()))
        return self._counted(request, json_response(_model(model_id), 200, _base_headers()))

    async def _admit(self, request: Request) -> Response | None:
        """Record a non-model call, wait the latency, and return a 401 when its key is wrong."""
        await self._record(request)
        denied = self._auth_error(request)
        await self._pause(request)
        if denied is None:
            return None
        return self._counted(request, json_response(denied, 401, _base_headers()))

    async def _model_call(self, request: Request, endpoint: Endpoint) -> Response:
        body = await self._record(request)
        self.state.log.opened()
        try:
            return await self._answer(request, endpoint, body)
        finally:
            self.state.log.closed()

    async def _answer(self, request: Request, endpoint: Endpoint, body: Any) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            # Refused calls never reach the model, so they leave the script untouched.
            await self._pause(request)
            return self._counted(request, json_response(denied, 401, _base_headers()))
        try:
            # Taken before the pause, so scripted answers follow arrival order.
            planned = self._plan(request)
        except ScriptError as exc:
            return self._counted(request, json_response(errors.invalid_request(str(exc)), 400))
        await self._pause(request, planned.delay_ms / 1000)
        response = await self._deliver(request, endpoint, body, planned)
        # Faults are counted by kind; everything else by the status actually sent.
        self.state.log.count(request.url.path, planned.kind or str(response.status_code))
        return response

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = _NOT_JSON
        self.state.log.record(
            request.method,
            request.url.path,
            dict(request.headers),
            None if body is _NOT_JSON else body,
            self.config.clock(),
        )
        return body

    def _plan(self, request: Request) -> ScriptedAnswer:
        if header := request.headers.get(FAULT_HEADER):
            return parse_fault_header(header)
        return self.state.script.pop() or self.state.dice.roll() or ScriptedAnswer()

    def _auth_error(self, request: Request) -> dict[str, Any] | None:
        """Return the 401 body when an API key is required and this one is missing or wrong."""
        expected = self.config.api_key
        if expected is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token == expected:
            return None
        return errors.wrong_api_key(token) if token else errors.missing_api_key()

    async def _pause(self, request: Request, extra_s: float = 0) -> None:
        """Sleep the configured (or per-call) latency without blocking other requests."""
        delay_s = self._latency_s(request) + extra_s
        if delay_s > 0:
            await asyncio.sleep(delay_s)

    def _latency_s(self, request: Request) -> float:
        override = request.headers.get(LATENCY_HEADER)
        try:
            latency_ms = float(override) if override is not None else self.config.latency_ms
        except ValueError:
            latency_ms = self.config.latency_ms
        return max(0.0, latency_ms) / 1000

    def _counted(self, request: Request, response: Response) -> Response:
        self.state.log.count(request.url.path, str(response.status_code))
        return response

    async def _deliver(
        self, request: Request, endpoint: Endpoint, body: Any, planned: ScriptedAnswer
    ) -> Response:
        headers = {**_base_headers(), **planned.headers}
        if planned.retry_after is not None:
            headers["retry-after"] = planned.retry_after
        if not planned.is_normal and planned.kind is None:
            content = planned.body
            if content is None:
                content = errors.for_status(planned.status)
            return json_response(content, planned.status, headers)
        prepared = self._prepare(endpoint, body)
        if planned.kind == "hang":
            if await wait_for_disconnect(request, self.config.fault_hang_s):
                return Response(status_code=499)  # Nobody is listening any more.
        elif planned.kind == "reset":
            return _cut(prepared, headers)
        elif planned.kind == "malformed":
            prepared = _malformed(prepared)
        return self._render(prepared, headers)

    def _prepare(self, endpoint: Endpoint, body: Any) -> Prepared:
        if body is _NOT_JSON:
            return Prepared(400, orjson.dumps(errors.unparsable_json()))
        check = check_chat_request if endpoint is Endpoint.CHAT else check_responses_request
        if problem := check(body):
            content = errors.invalid_request(problem.message, problem.param, problem.code)
            return Prepared(400, orjson.dumps(content))
        now = self.config.clock()
        streamed = body.get("stream") is True
        if endpoint is Endpoint.RESPONSES:
            response = build_response(body, now)
            if streamed:
                return Prepared(200, frames=tuple(response_frames(response)))
            return Prepared(200, orjson.dumps(response))
        completion = build_chat_completion(body, now)
        if streamed:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            return Prepared(200, frames=tuple(chat_frames(completion, usage)))
        return Prepared(200, orjson.dumps(completion))

    def _render(self, prepared: Prepared, headers: dict[str, str]) -> Response:
        if prepared.frames is not None:
            return sse_response(list(prepared.frames), self.config.chunk_delay_ms / 1000, headers)
        return Response(prepared.payload, prepared.status, headers, JSON_MEDIA_TYPE)


def _cut(prepared: Prepared, headers: dict[str, str]) -> Response:
    if prepared.frames is not None:
        partial = b"".join(prepared.frames[:2])
        return CutResponse(prepared.status, partial, None, SSE_MEDIA_TYPE, headers)
    payload = prepared.payload
    half = payload[: len(payload) // 2]
    return CutResponse(prepared.status, half, len(payload), JSON_MEDIA_TYPE, headers)


def _malformed(prepared: Prepared) -> Prepared:
    if prepared.frames is not None:
        return Prepared(prepared.status, frames=tuple(break_frames(list(prepared.frames))))
    return Prepared(prepared.status, prepared.payload[: len(prepared.payload) // 2])


def _base_headers() -> dict[str, str]:
    return {"x-request-id": f"req_{uuid.uuid4().hex}", **_RATE_LIMIT_HEADERS}


def _model(model_id: str) -> dict[str, Any]:
    owner = model_id.split("/", 1)[0] if "/" in model_id else "gmi"
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": owner}
