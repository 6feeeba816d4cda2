"""The simulator's knobs: auth, latency, random faults and the advertised models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MODEL_IDS = ("openai/gpt-5.4-mini",)


@dataclass
class SimulatorConfig:
    """How a simulator instance behaves; every field has a harmless default."""

    # When set, every /v1 call must carry `Authorization: Bearer <api_key>`.
    api_key: str | None = None
    # Added before every /v1 answer (awaited, so the event loop keeps serving others).
    latency_ms: float = 0
    # Probability that a model call fails with a random fault (429, 500, 503, hang, reset).
    fault_rate: float = 0.0
    # Seeds the fault dice so a given call order always meets the same faults.
    seed: int = 0
    # How long a "hang" fault holds the request: far past any sane client read timeout.
    fault_hang_s: float = 30
    # Served by GET /v1/models; other ids are still accepted by the model endpoints.
    model_ids: list[str] = field(default_factory=lambda: list(DEFAULT_MODEL_IDS))
    # Pause between SSE frames, to make streams look like token-by-token generation.
    chunk_delay_ms: float = 0
    # GMI does not document /v1/responses; turning it off lets clients test their fallback.
    enable_responses: bool = True
    # The request log is for tests; the cap keeps long benchmark runs from growing memory.
    request_log_limit: int = 10_000
    # Injected so tests can pin `created`/`created_at`; defaults to wall-clock time.
    clock: Callable[[], float] = time.time
