"""Operators see job states, queue depth, latency, errors and spend."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import ApiServer, WorkerProcess
from tests.integration.test_pipeline import poll_terminal
from worker.settings import Settings
from worker.simulator import SimulatorServer
from worker.stats import Price, estimate_cost


def test_cost_counts_cached_input_at_the_cached_price() -> None:
    price = Price(input_per_m=1.0, output_per_m=4.0, cached_input_per_m=0.1)
    assert estimate_cost(price, 1_000_000, 500_000, 250_000) == 0.5 + 0.05 + 1.0
    assert estimate_cost(Price(2.0, 8.0), 1_000_000, 500_000, 0) == 2.0


def test_stats_show_states_latency_errors_and_spend(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
) -> None:
    model = f"test/stats-{id(sim)}"
    settings = deployment(prices_per_million_tokens={model: (1.0, 2.0)})
    start_worker(settings)
    api = start_api(settings)
    sim.script([{"status": 503}])
    body = {
        "kind": "chat",
        "request": {"model": model, "messages": [{"role": "user", "content": "x"}]},
    }
    views = [
        poll_terminal(api, api.client.post("/v1/jobs", json=body).json()["id"]) for _ in range(2)
    ]

    stats = api.client.get("/v1/stats").json()
    assert stats["jobs"]["succeeded"] >= 2
    assert set(stats["queues"]) >= {"gmiq.high", "gmiq.normal", "gmiq.low", "unacked"}
    assert stats["latency_s"]["jobs"] >= 2
    assert stats["latency_s"]["p50"] > 0
    assert stats["errors"]["503"] >= 1
    [usage] = [u for u in stats["usage"] if u["model"] == model]
    inputs = sum(v["usage"]["input_tokens"] for v in views)
    outputs = sum(v["usage"]["output_tokens"] for v in views)
    assert (usage["jobs"], usage["input_tokens"], usage["output_tokens"]) == (2, inputs, outputs)
    assert usage["cost_usd"] == round((inputs * 1.0 + outputs * 2.0) / 1_000_000, 6)
