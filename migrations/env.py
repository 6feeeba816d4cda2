"""Alembic environment: the URL comes from the caller's config, else from Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from worker import webhook_models  # noqa: F401  (puts the webhook tables on Base.metadata)
from worker.models import Base
from worker.settings import get_settings, to_sqlalchemy_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    given = config.get_main_option("sqlalchemy.url")
    return to_sqlalchemy_url(given or get_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
