"""The one Settings class: every environment variable gmiq reads is declared here."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_GMI_BASE_URL = "https://api.gmi-serving.com/v1/"
DEFAULT_MODEL = "openai/gpt-5.4-mini"


def to_sqlalchemy_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and pin them to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    """Everything configurable, from `GMIQ_*` variables (and `GMI_API_KEY`)."""

    model_config = SettingsConfigDict(env_prefix="GMIQ_", extra="ignore", populate_by_name=True)

    # Empty means "not configured": `gmiq standalone` then starts embedded servers.
    database_url: str = ""
    redis_url: str = ""
    # Prefixes every Redis key and queue name, so test runs and tenants never collide.
    redis_prefix: str = "gmiq"
    var_dir: str = "./var"

    gmi_base_url: str = DEFAULT_GMI_BASE_URL
    gmi_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GMIQ_GMI_API_KEY", "GMI_API_KEY")
    )
    default_model: str = DEFAULT_MODEL

    connect_timeout_s: float = 10.0
    # Reasoning models can think for minutes before the first byte arrives.
    read_timeout_s: float = 600.0
    # One whole call, however slowly the bytes come; a job may set its own (`timeouts.call_s`).
    call_timeout_s: float = 1800.0
    max_connections: int = 1000

    # Upstream calls in flight per worker process, all waiting on its event loop. Answers
    # waiting to be recorded do not hold a slot (up to as many again may wait).
    worker_concurrency: int = 200
    # Celery threads per worker process for the job task. Plain job messages do not use them
    # (the consumer offers them straight to the call loop, `job_strategy`); the task runs
    # for the messages that take Celery's own path (an ETA, an expiry), each waiting for a
    # slot. With the prefetch multiplier they set how many messages a worker holds.
    claim_threads: int = 16
    # Messages a worker takes from Redis per round trip, and acknowledgements it writes per round
    # trip, at most (never past its prefetch): Celery's one consumer thread doing both one by
    # one bound a process (docs/performance.md). 1: one at a time, as kombu does.
    broker_batch: int = Field(default=64, ge=1)
    # Messages a worker process holds per Celery thread (Celery's prefetch multiplier): 4 lets
    # one batched read take 64 messages with 16 claim threads, where 1 (16) made the consumer
    # thread's round trips the bound at 1,000 in flight (docs/performance.md).
    prefetch_multiplier: int = Field(default=4, ge=1)
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    # How often each worker looks for due jobs to publish and expired leases to reap.
    dispatch_interval_s: float = 1.0
    # A published job not claimed within this long is published again (duplicates are no-ops).
    redispatch_after_s: float = 600.0
    # A running job whose worker stops renewing its lease for this long is taken back.
    lease_s: float = 60.0
    heartbeat_s: float = 10.0
    # How many times a job may lose its worker (SIGKILL, OOM) before it is failed.
    max_lost_attempts: int = 3
    # SIGTERM: how long a worker waits for running calls before handing them back.
    shutdown_grace_s: float = 30.0
    # kombu puts a delivered, unacknowledged message back on its queue after this long. That
    # recovers messages a dead worker had taken but not started (their jobs are still queued,
    # so no lease covers them); a copy redelivered for a job still running is a no-op.
    visibility_timeout_s: int = 300
    db_pool_size: int = 20
    # Net allocations between young garbage collections in the API and worker processes, whose
    # startup objects are frozen first (worker/heap.py); 0 keeps Python's defaults (700).
    gc_gen0_threshold: int = Field(default=20_000, ge=0)
    # Per-job event streams (`GET /v1/jobs/{id}/events`): entries kept per job (approximately),
    # and how long a stream lives after its last event; later, followers get the final view
    # from Postgres only.
    events_maxlen: int = 10_000
    events_ttl_s: int = 3600
    # A quiet follower's stream checks Postgres (for ends nobody published) and sends a
    # keep-alive comment this often.
    events_idle_s: float = 5.0

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_body_bytes: int = 1_000_000

    # Operators' view (`GET /v1/stats`): the window for latency, errors and spend, and prices in
    # USD per million tokens: {"model": [input, output, cached input (optional)]}.
    stats_window_s: float = 3600.0
    prices_per_million_tokens: dict[str, tuple[float, float] | tuple[float, float, float]] = {}
    simulator_port: int = 8765
    # The key the bundled simulator demands; standalone generates one per run.
    simulator_api_key: SecretStr | None = None
    simulator_latency_ms: float = 0.0
    log_level: str = "INFO"

    # Webhook callbacks (docs/webhooks.md). Comma-separated `whsec_` secrets: each signs every
    # event, so during a rotation list the new and the old one.
    webhook_secrets: SecretStr | None = None
    # Encrypts per-job callback secrets at rest (comma-separated: the first encrypts, all
    # decrypt). Unset: a key is generated once in `var_dir` (fine for one machine).
    secret_key: SecretStr | None = None
    webhook_allow_http: bool = False
    # Callback hosts on loopback, private, link-local or metadata addresses are refused unless set.
    webhook_allow_private: bool = False
    # Thin events carry only the job's id and status; receivers fetch the rest.
    webhook_thin_events: bool = False
    webhook_timeout_s: float = 15.0
    # The delay before each attempt (the first is immediate): Svix's schedule, 8 attempts in all.
    webhook_retry_schedule_s: Annotated[tuple[float, ...], NoDecode] = (
        0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0,
    )  # fmt: skip
    # A published delivery not attempted within this long is published again (duplicates no-op).
    webhook_redispatch_after_s: float = 120.0
    # Deliveries in flight per worker process; more wait, so slow receivers leave job threads free.
    webhook_concurrency: int = 16
    webhook_response_excerpt_bytes: int = 1024

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # `0,5,300` from the environment; brackets accepted, as a dumped tuple or list prints.
        if isinstance(value, str):
            return tuple(float(part) for part in value.strip("()[] ").split(",") if part.strip())
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule_valid(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("needs at least one delay, none negative")
        return value

    @field_validator("gmi_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @property
    def sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.database_url)

    @property
    def broker_url(self) -> str:
        return self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once, at an entry point."""
    return Settings()


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment plus overrides, for child processes (standalone, tests)."""
    return {**os.environ, **overrides}
