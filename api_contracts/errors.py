"""The error body every 4xx and 5xx answer of the HTTP API uses."""

from __future__ import annotations

from pydantic import BaseModel


class FieldErrorView(BaseModel):
    """One invalid field: its dotted path in the submitted body and what is wrong."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """`type` is stable and machine-readable; `message` is for people."""

    type: str
    message: str
    fields: list[FieldErrorView] = []


class ErrorView(BaseModel):
    """The envelope: `{"error": {...}}`, as the OpenAI API does it."""

    error: ErrorBody
