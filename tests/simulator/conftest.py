"""Fixtures for the simulator's tests: a running simulator and the OpenAI spec's schemas."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from worker.simulator import SimulatorConfig, SimulatorServer

API_KEY = "sim-key-for-tests"
# A pinned clock makes whole bodies comparable between calls (ids are already deterministic).
FIXED_NOW = 1_750_000_000.0
SPEC_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "spec"


@pytest.fixture(scope="session")
def server() -> Iterator[SimulatorServer]:
    """One simulator for the session, requiring API_KEY, with a fixed clock."""
    config = SimulatorConfig(api_key=API_KEY, fault_hang_s=5, clock=lambda: FIXED_NOW)
    with SimulatorServer(config) as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> SimulatorServer:
    """The session simulator with an empty script, log and stats."""
    server.reset()
    return server


class SpecSchemas:
    """Validates instances against `components/schemas` of openapi.subset.json."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = _loosen(document)

    def validate(self, name: str, instance: object) -> None:
        """Raise jsonschema.ValidationError unless `instance` matches schema `name`."""
        schema = {**self._document, "$ref": f"#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema).validate(instance)


def _loosen(node: Any) -> Any:
    """Apply the two documented tweaks: `nullable: true` admits null, `oneOf` acts as `anyOf`."""
    if isinstance(node, list):
        return [_loosen(item) for item in node]
    if not isinstance(node, dict):
        return node
    loosened = {("anyOf" if key == "oneOf" else key): _loosen(value) for key, value in node.items()}
    if loosened.pop("nullable", False) is True:
        return {"anyOf": [loosened, {"type": "null"}]}
    return loosened


@pytest.fixture(scope="session")
def validate_spec() -> Callable[[str, object], None]:
    """`validate_spec(schema_name, instance)`; skips the test when the shared spec is absent."""
    path = SPEC_DIR / "openapi.subset.json"
    if not path.is_file():
        pytest.skip(f"OpenAI spec subset not found at {path} (it lives in shared/spec/)")
    return SpecSchemas(json.loads(path.read_text())).validate
