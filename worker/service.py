"""Builds the API process's objects from settings: engine, Celery publisher, producer, app."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker import repository
from worker.api import create_app
from worker.celery_app import broker_key_prefix, create_celery_app
from worker.db import make_engine, make_sessionmaker
from worker.producer import JobProducer
from worker.queues import publish_job, queue_depths, redis_client_url
from worker.settings import Settings


def build_producer(settings: Settings) -> tuple[JobProducer, sessionmaker[Session], Celery]:
    """A producer on the configured Postgres and Redis (what Python services embed)."""
    sessions = make_sessionmaker(make_engine(settings.database_url, settings.db_pool_size))
    app = create_celery_app(settings)
    producer = JobProducer(
        sessions=sessions,
        publish=lambda message: publish_job(app, message),
        default_model=settings.default_model,
        redispatch_after_s=settings.redispatch_after_s,
    )
    return producer, sessions, app


def build_api(settings: Settings) -> FastAPI:
    """The HTTP API wired to real services."""
    producer, sessions, _ = build_producer(settings)
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

    def stats() -> dict[str, Any]:
        with sessions() as session:
            jobs = repository.count_by_status(session)
        return {"jobs": jobs, "queues": queue_depths(client, prefix)}

    return create_app(producer, health, stats, settings.max_body_bytes)
