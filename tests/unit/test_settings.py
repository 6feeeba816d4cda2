"""Settings: URL forms, the GMI key's names, and the key kept secret."""

from __future__ import annotations

import pytest

from worker.settings import DEFAULT_GMI_BASE_URL, DEFAULT_MODEL, Settings, to_sqlalchemy_url


def test_plain_postgres_urls_get_the_psycopg_driver() -> None:
    assert to_sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert to_sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert to_sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GMIQ_GMI_BASE_URL", "GMIQ_DEFAULT_MODEL", "GMI_API_KEY", "GMIQ_GMI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.gmi_base_url == DEFAULT_GMI_BASE_URL == "https://api.gmi-serving.com/v1/"
    assert settings.default_model == DEFAULT_MODEL == "openai/gpt-5.4-mini"
    assert settings.gmi_api_key is None


def test_gmi_api_key_is_read_under_both_names_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GMIQ_GMI_API_KEY", raising=False)
    monkeypatch.setenv("GMI_API_KEY", "sk-secret-one")
    settings = Settings()
    assert settings.gmi_api_key is not None
    assert settings.gmi_api_key.get_secret_value() == "sk-secret-one"
    assert "sk-secret-one" not in repr(settings)
    assert "sk-secret-one" not in settings.model_dump_json()
    monkeypatch.setenv("GMIQ_GMI_API_KEY", "sk-secret-two")
    assert Settings().gmi_api_key.get_secret_value() == "sk-secret-two"  # type: ignore[union-attr]


def test_base_url_gets_a_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMIQ_GMI_BASE_URL", "http://127.0.0.1:9/v1")
    assert Settings().gmi_base_url == "http://127.0.0.1:9/v1/"


def test_a_worker_holds_its_prefetch_multiplier_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.celery_app import create_celery_app

    monkeypatch.delenv("GMIQ_PREFETCH_MULTIPLIER", raising=False)
    assert create_celery_app(Settings()).conf.worker_prefetch_multiplier == 4
    monkeypatch.setenv("GMIQ_PREFETCH_MULTIPLIER", "1")
    assert create_celery_app(Settings()).conf.worker_prefetch_multiplier == 1
