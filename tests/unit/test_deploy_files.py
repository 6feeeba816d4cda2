"""The container files stay true to the code: every command they run is a `gmiq` subcommand
with options it accepts, every gmiq variable they set is a setting, and the image copies what
the package needs. (No Docker here to run them; this catches a rename that breaks them.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.cli import build_parser
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "docker-compose.pgbouncer.yml"]


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _setting_names() -> set[str]:
    names = {f"GMIQ_{name.upper()}" for name in Settings.model_fields}
    return names | {"GMI_API_KEY"}


def test_the_main_compose_file_runs_migrations_before_the_api_and_workers() -> None:
    services = _load(REPO / "docker-compose.yml")["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "webhook-worker"} <= set(services)
    for role in ("api", "worker", "webhook-worker"):
        needs = services[role]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
    # A worker's SIGTERM grace must fit in the container's stop period.
    for role in ("worker", "webhook-worker"):
        grace = int(services[role]["stop_grace_period"].rstrip("s"))
        assert grace > Settings.model_fields["shutdown_grace_s"].default
    # Between them, the workers consume every queue.
    consumed = {services[role]["command"][3] for role in ("worker", "webhook-worker")}
    assert consumed == {"jobs", "webhooks"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_commands_are_gmiq_subcommands_it_accepts(path: Path) -> None:
    parser: argparse.ArgumentParser = build_parser()
    for name, service in _load(path)["services"].items():
        command = service.get("command")
        if not command or command[0] != "gmiq":
            continue
        args = parser.parse_args(command[1:])  # SystemExit on an unknown subcommand or option
        assert callable(args.func), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_sets_only_variables_gmiq_reads(path: Path) -> None:
    text = path.read_text()
    named = set(re.findall(r"^\s+(GMIQ?_[A-Z0-9_]+):", text, flags=re.MULTILINE))
    assert named, "no gmiq variables found"
    assert named <= _setting_names(), named - _setting_names()


def test_the_image_copies_the_packages_and_migrations() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for needed in ("api_contracts", "worker", "migrations", "alembic.ini", "uv.lock"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", dockerfile, flags=re.MULTILINE), (
            needed
        )
    assert "USER gmiq" in dockerfile
