"""What Postgres can store in a JSON column, and the path named for what it cannot."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from api_contracts.jobs import MAX_DEPTH, InvalidFieldError, check_storable


class Tag(str):
    """A str subclass, as an enum's value may be: JSON text all the same."""


def nested(levels: int) -> dict[str, Any]:
    """An object whose innermost object is `levels` below the top."""
    value: dict[str, Any] = {"x": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    "value",
    [
        {"text": "a backslash then u0000 is text: \\u0000"},
        {"edges": [2**64 - 1, -(2**63), 0.5, True, None, "", []]},
        {"nested": ({"tuple": "from a Python producer"},)},
        {"text": "é, 日本, 🙂 (a surrogate pair in JSON)", Tag("key"): Tag("value")},
        nested(MAX_DEPTH - 1),
    ],
)
def test_storable_values_pass(value: Any) -> None:
    check_storable(value, "request")


@pytest.mark.parametrize(
    ("value", "field", "reason"),
    [
        ({"a": [{"b": "x"}, {"b": "y\x00"}]}, "request.a[1].b", "NUL"),
        ({"a": {"key\x00": 1}}, "request.a", "key"),
        ({"a": [2**64]}, "request.a[0]", "64 bits"),
        ({"a": -(2**63) - 1}, "request.a", "64 bits"),
        ({"a": float("-inf")}, "request.a", "finite"),
        ({"a": ({"b": float("nan")},)}, "request.a[0].b", "finite"),
        # Python's JSON parser takes half a surrogate pair; UTF-8 (and orjson) cannot.
        ({"a": ["ok", "x\ud800"]}, "request.a[1]", "surrogate"),
        ({"a": {"\udfff": 1}}, "request.a", "surrogate"),
        # From Python producers: what is not JSON at all.
        ({"a": {1: "x"}}, "request.a", "not a string"),
        ({"a": Decimal("1.5")}, "request.a", "JSON value"),
        ({"a": {1, 2}}, "request.a", "JSON value"),
        (nested(MAX_DEPTH), "request" + ".n" * MAX_DEPTH, "nested deeper"),
    ],
)
def test_unstorable_values_are_refused_naming_the_field(
    value: Any, field: str, reason: str
) -> None:
    with pytest.raises(InvalidFieldError) as refused:
        check_storable(value, "request")
    assert refused.value.field == field
    assert reason in refused.value.reason
