"""The one Settings class: every environment variable gmiq reads is declared here."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    max_connections: int = 1000

    worker_concurrency: int = 200
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
    # kombu's Redis redelivery of unacked messages; the Postgres lease recovers faster.
    visibility_timeout_s: int = 3600
    db_pool_size: int = 20

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_body_bytes: int = 1_000_000

    simulator_port: int = 8765
    # The key the bundled simulator demands; standalone generates one per run.
    simulator_api_key: SecretStr | None = None
    simulator_latency_ms: float = 0.0
    log_level: str = "INFO"

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
