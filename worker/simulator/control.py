"""The simulator's own control endpoints under /_sim/: script answers, read the log, reset.

These are not part of the OpenAI API; they let a test steer and inspect the fake upstream.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.simulator.errors import invalid_request
from worker.simulator.faults import ScriptError, parse_script
from worker.simulator.state import SimulatorState
from worker.simulator.transport import json_response


def control_routes(state: SimulatorState) -> list[Route]:
    """Return the /_sim/ routes bound to one simulator's state."""

    async def script(request: Request) -> Response:
        try:
            answers = parse_script(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, ScriptError) as exc:
            return json_response(invalid_request(str(exc), param="answers"), 400)
        state.script.extend(answers)
        return json_response({"queued": len(answers), "pending": len(state.script)})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"ok": True})

    async def requests(request: Request) -> Response:
        return json_response({"requests": state.log.entries()})

    async def stats(request: Request) -> Response:
        return json_response({**state.log.stats(), "pending_script": len(state.script)})

    return [
        Route("/_sim/script", script, methods=["POST"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/requests", requests, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
    ]
