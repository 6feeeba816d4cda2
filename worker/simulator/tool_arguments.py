"""Build deterministic tool-call arguments from a function's JSON-schema `parameters` (pure)."""

from __future__ import annotations

from typing import Any

_INTEGER_VALUE = 42
_NUMBER_VALUE = 1.5
_FALLBACK_STRING = "sim"
_STRING_LENGTH = 32
# Guards against self-referencing `$ref` schemas, which would otherwise recurse forever.
_MAX_DEPTH = 8


def build_arguments(parameters: object, user_text: str) -> dict[str, Any]:
    """Return an arguments object that satisfies `parameters` (a JSON-schema object)."""
    if not isinstance(parameters, dict):
        return {}
    value = _sample(parameters, parameters, _string_seed(user_text), 0)
    return value if isinstance(value, dict) else {}


def sample_value(schema: object, user_text: str) -> Any:
    """Return a deterministic value for any JSON schema (used for structured outputs too)."""
    if not isinstance(schema, dict):
        return _string_seed(user_text)
    return _sample(schema, schema, _string_seed(user_text), 0)


def _string_seed(user_text: str) -> str:
    text = " ".join(user_text.split())[:_STRING_LENGTH]
    return text or _FALLBACK_STRING


def _sample(schema: dict[str, Any], root: dict[str, Any], text: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _sample(_resolve(ref, root), root, text, depth + 1)
    for union_key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(union_key)
        if isinstance(branches, list) and branches and isinstance(branches[0], dict):
            return _sample(_first_non_null(branches), root, text, depth + 1)
    return _sample_typed(schema, _schema_type(schema), root, text, depth)


def _sample_typed(
    schema: dict[str, Any], kind: str, root: dict[str, Any], text: str, depth: int
) -> Any:
    if kind == "object":
        return _sample_object(schema, root, text, depth)
    if kind == "array":
        items = schema.get("items")
        min_items = schema.get("minItems")
        count = min_items if isinstance(min_items, int) and min_items > 1 else 1
        item_schema = items if isinstance(items, dict) else {}
        return [_sample(item_schema, root, text, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(_clamp(_INTEGER_VALUE, schema))
    if kind == "number":
        return _clamp(_NUMBER_VALUE, schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _sample_object(
    schema: dict[str, Any], root: dict[str, Any], text: str, depth: int
) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    # With `required` given, a model would usually fill only those; without it, all of them.
    names = [n for n in properties if n in required] if isinstance(required, list) else properties
    return {
        name: _sample(
            properties[name] if isinstance(properties[name], dict) else {}, root, text, depth + 1
        )
        for name in names
    }


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _first_non_null(branches: list[Any]) -> dict[str, Any]:
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") != "null":
            return branch
    first: dict[str, Any] = branches[0]
    return first


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    # Only local refs (`#/$defs/Name`) can be resolved without fetching anything.
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for key in ref[2:].split("/"):
        if not isinstance(node, dict) or key not in node:
            return {}
        node = node[key]
    return node if isinstance(node, dict) else {}


def _clamp(value: float, schema: dict[str, Any]) -> float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if isinstance(low, int | float) and value < low:
        value = low
    if isinstance(high, int | float) and value > high:
        value = high
    return value
