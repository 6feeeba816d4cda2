"""Builds the API process's objects from settings: engine, Celery publisher, producer, app."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from celery import Celery
from fastapi import FastAPI
from kombu.exceptions import KombuError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker import repository
from worker import stats as operator_stats
from worker.api import create_app
from worker.callbacks import CallbackPolicy
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.db import make_engine, make_sessionmaker, open_connections
from worker.events_api import create_events_router
from worker.intake import Intake
from worker.producer import JobProducer
from worker.queues import (
    publish_job,
    publish_jobs,
    queue_depths,
    redis_client_url,
    reuse_broker_clients,
    warm_publisher,
)
from worker.secret_box import SecretBox
from worker.settings import Settings
from worker.stats import Price
from worker.webhook_admin import WebhookAdmin
from worker.webhook_api import build_webhook_router
from worker.webhooks import parse_secrets

log = logging.getLogger(__name__)


def build_producer(settings: Settings) -> tuple[JobProducer, sessionmaker[Session], Celery]:
    """A producer on the configured Postgres and Redis (what Python services embed)."""
    sessions = make_sessionmaker(make_engine(settings.database_url, settings.db_pool_size))
    app = create_celery_app(settings)
    reuse_broker_clients()
    producer = JobProducer(
        sessions=sessions,
        publish=lambda message: publish_job(app, message),
        default_model=settings.default_model,
        redispatch_after_s=settings.redispatch_after_s,
        callbacks=build_callback_policy(settings),
        intake=Intake(
            sessions, lambda messages: publish_jobs(app, messages), settings.redispatch_after_s
        ),
    )
    return producer, sessions, app


def warm_producer(sessions: sessionmaker[Session], app: Celery, connections: int) -> None:
    """Before serving: connect the pools, compile the view's statement and build Celery's
    publishing path, so the first submissions after a start are not slower than the rest.
    A service that is down is not fatal here: requests answer 503 until it is back."""
    try:
        open_connections(sessions, connections)
        with sessions() as session:
            repository.get_job_record(session, uuid.uuid4())
        warm_publisher(app)
    except (SQLAlchemyError, redis.RedisError, KombuError, OSError) as exc:
        log.warning("warm-up incomplete: %s", type(exc).__name__)


def build_callback_policy(settings: Settings) -> CallbackPolicy:
    """The operator's callback rules; a malformed GMIQ_WEBHOOK_SECRETS stops startup here."""
    secrets = settings.webhook_secrets.get_secret_value() if settings.webhook_secrets else ""
    return CallbackPolicy(
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private,
        has_operator_secrets=bool(parse_secrets(secrets)),
        box=SecretBox.from_settings(settings),
    )


def build_api(settings: Settings, warm: bool = False) -> FastAPI:
    """The HTTP API wired to real services; `warm` connects and prepares them first (see
    `warm_producer`)."""
    producer, sessions, app = build_producer(settings)
    if warm:
        warm_producer(sessions, app, settings.db_pool_size)
    client: redis.Redis = redis.Redis.from_url(
        redis_client_url(settings.redis_url), socket_timeout=2, socket_connect_timeout=2
    )
    prefix = broker_key_prefix(settings)

    def health() -> dict[str, str]:
        checks = {"database": "ok", "redis": "ok"}
        try:
            with sessions() as session:
                repository.ping(session)
        except SQLAlchemyError:
            checks["database"] = "unavailable"
        try:
            client.ping()
        except redis.RedisError:
            checks["redis"] = "unavailable"
        return checks

    prices = {model: Price(*rates) for model, rates in settings.prices_per_million_tokens.items()}
    window_s = settings.stats_window_s

    def stats() -> dict[str, Any]:
        with sessions() as session:
            return {
                "jobs": operator_stats.jobs_by_status(session),
                "queues": queue_depths(client, prefix),
                "window_s": window_s,
                "latency_s": operator_stats.latency_seconds(session, window_s),
                "errors": operator_stats.errors_by_type(session, window_s),
                "usage": operator_stats.usage_by_model(session, window_s, prices),
            }

    api = create_app(producer, health, stats, settings.max_body_bytes)
    api.include_router(build_webhook_router(WebhookAdmin(sessions)))
    api.include_router(
        create_events_router(
            producer, _event_reader(settings), settings.redis_prefix, settings.events_idle_s
        )
    )
    # Whoever serves the app disposes the pool when it stops (tests run many APIs in one process).
    api.state.engine = sessions.kw["bind"]
    return api


def _event_reader(settings: Settings) -> Callable[[], redis.asyncio.Redis]:
    """A new async client per follower: it lives as long as that follower's stream."""
    url = redis_client_url(settings.redis_url)
    return lambda: redis.asyncio.Redis.from_url(url, socket_connect_timeout=2)
