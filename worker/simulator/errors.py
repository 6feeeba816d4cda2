"""OpenAI-shaped error bodies (`{"error": {"message", "type", "param", "code"}}`) (pure)."""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Return an `ErrorResponse` body; all four keys are always present, as the schema demands."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def invalid_request(
    message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Return a 400 body for a request the API refuses to run."""
    return error_body(message, INVALID_REQUEST, param, code)


def unparsable_json() -> dict[str, Any]:
    """Return the 400 body the API sends when the request body is not JSON."""
    return invalid_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
    )


def missing_api_key() -> dict[str, Any]:
    """Return the 401 body for a request without a bearer token."""
    return invalid_request(
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )


def wrong_api_key(presented: str) -> dict[str, Any]:
    """Return the 401 body for a wrong key; like the API, only the key's tail is echoed."""
    masked = f"{presented[:3]}***{presented[-4:]}" if len(presented) > 8 else "***"
    return invalid_request(f"Incorrect API key provided: {masked}.", code="invalid_api_key")


def rate_limited() -> dict[str, Any]:
    """Return a 429 body for a request-rate limit (retryable, unlike `insufficient_quota`)."""
    return error_body(
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_error",
        code="rate_limit_exceeded",
    )


def server_error() -> dict[str, Any]:
    """Return a 500 body."""
    return error_body(
        "The server had an error while processing your request. Sorry about that!", "server_error"
    )


def overloaded() -> dict[str, Any]:
    """Return a 503 body."""
    return error_body(
        "The engine is currently overloaded, please try again later.",
        "server_error",
        code="overloaded",
    )


def model_not_found(model: str) -> dict[str, Any]:
    """Return the 404 body for an unknown model id."""
    return invalid_request(
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def unknown_url(method: str, path: str) -> dict[str, Any]:
    """Return the 404 body the API sends for a path it does not serve."""
    return invalid_request(f"Invalid URL ({method} {path})")


def for_status(status: int) -> dict[str, Any]:
    """Return a plausible body for an error status that was scripted without one."""
    if status == 429:
        return rate_limited()
    if status == 503:
        return overloaded()
    if status >= 500:
        return server_error()
    if status == 401:
        return missing_api_key()
    if status == 404:
        return invalid_request("Not found.", code="not_found")
    return invalid_request(f"Simulated error with status {status}.")
