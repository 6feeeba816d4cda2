"""What Postgres can store in a JSON column, and the path named for what it cannot."""

from __future__ import annotations

from typing import Any

import pytest

from api_contracts.jobs import InvalidFieldError, check_storable


@pytest.mark.parametrize(
    "value",
    [
        {"text": "a backslash then u0000 is text: \\u0000"},
        {"edges": [2**64 - 1, -(2**63), 0.5, True, None, "", []]},
        {"nested": ({"tuple": "from a Python producer"},)},
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
    ],
)
def test_unstorable_values_are_refused_naming_the_field(
    value: Any, field: str, reason: str
) -> None:
    with pytest.raises(InvalidFieldError) as refused:
        check_storable(value, "request")
    assert refused.value.field == field
    assert reason in refused.value.reason
