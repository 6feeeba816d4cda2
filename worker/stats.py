"""What operators watch, read from Postgres: jobs per state, latency, errors and token spend
over a recent window. One query per figure; all use indexed columns or bounded windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_m: float
    output_per_m: float
    cached_input_per_m: float | None = None


def jobs_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each state."""
    rows = session.execute(text("SELECT status, count(*) FROM job GROUP BY status")).all()
    return {status: int(count) for status, count in rows}


def latency_seconds(session: Session, window_s: float) -> dict[str, float | int | None]:
    """Submit-to-finish latency percentiles of jobs that ended within the window."""
    row = session.execute(
        text(
            "SELECT count(*) AS n,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY d) AS p95,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99"
            " FROM (SELECT extract(epoch FROM finished_at - created_at) AS d FROM job"
            "       WHERE finished_at > now() - make_interval(secs => :w)"
            "       AND status = 'succeeded') AS recent"
        ),
        {"w": window_s},
    ).one()
    return {
        "jobs": int(row.n),
        "p50": _float(row.p50),
        "p95": _float(row.p95),
        "p99": _float(row.p99),
    }


def errors_by_type(session: Session, window_s: float) -> dict[str, int]:
    """Failed attempts within the window, by error type (HTTP status where there is one)."""
    rows = session.execute(
        text(
            "SELECT coalesce(status_code::text, error_type, 'unknown') AS kind, count(*)"
            " FROM attempt WHERE outcome IN ('retry', 'failed', 'lost')"
            " AND started_at > now() - make_interval(secs => :w) GROUP BY kind"
        ),
        {"w": window_s},
    ).all()
    return {str(kind): int(count) for kind, count in rows}


def usage_by_model(
    session: Session, window_s: float, prices: dict[str, Price]
) -> list[dict[str, Any]]:
    """Tokens per model within the window, and their cost where a price is configured."""
    rows = session.execute(
        text(
            "SELECT coalesce(model, 'unknown') AS model, count(*) AS jobs,"
            " sum(input_tokens) AS input, sum(output_tokens) AS output,"
            " sum(cached_tokens) AS cached, sum(reasoning_tokens) AS reasoning"
            " FROM usage WHERE created_at > now() - make_interval(secs => :w)"
            " GROUP BY 1 ORDER BY 1"
        ),
        {"w": window_s},
    ).all()
    result = []
    for row in rows:
        entry: dict[str, Any] = {
            "model": row.model,
            "jobs": int(row.jobs),
            "input_tokens": int(row.input),
            "output_tokens": int(row.output),
            "cached_tokens": int(row.cached),
            "reasoning_tokens": int(row.reasoning),
            "cost_usd": None,
        }
        price = prices.get(row.model)
        if price is not None:
            entry["cost_usd"] = estimate_cost(
                price, int(row.input), int(row.cached), int(row.output)
            )
        result.append(entry)
    return result


def estimate_cost(price: Price, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
    """Cost in USD; cached input tokens at the cached price where one is given."""
    cached_rate = (
        price.input_per_m if price.cached_input_per_m is None else price.cached_input_per_m
    )
    uncached = max(0, input_tokens - cached_tokens)
    total = (
        uncached * price.input_per_m
        + cached_tokens * cached_rate
        + output_tokens * price.output_per_m
    )
    return round(total / 1_000_000, 6)


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)
