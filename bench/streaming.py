"""The streaming case: every call is a streamed chat (`"stream": true`), read as server-sent
events to its end. The simulator sends the bench call's answer in frames `--stream-chunk-delay-ms`
apart (62.5 ms: 8 pauses, 500 ms per stream) with no latency before the first frame; the limit
reads the streams straight from it, the naive task reads them line by line, and gmiq's worker
reads them and publishes the deltas to Redis Streams for followers."""

from __future__ import annotations

from dataclasses import replace

from bench.cases import measure_latency
from bench.config import BenchConfig, Upstream
from bench.processes import start_simulator
from bench.report import CaseResult
from bench.stack import Stack
from bench.workload import stream_pauses


def stream_ms(config: BenchConfig) -> float:
    """How long one stream lasts at the simulator (first frame to last)."""
    return stream_pauses() * config.stream_chunk_delay_ms


def describe_streaming(config: BenchConfig) -> str:
    """The pacing and size of the case, as printed and stored."""
    pauses = stream_pauses()
    return (
        f"streamed chat: the simulator's answer to the bench call in {pauses + 1} SSE frames "
        f"{config.stream_chunk_delay_ms:g} ms apart, no latency before the first: "
        f"{stream_ms(config):g} ms per stream; {config.stream_jobs} jobs, concurrency "
        f"{config.concurrency}; added latency leaves the {stream_ms(config):g} ms out, TTFT is "
        "from sending the upstream request to the first text delta"
    )


def streaming_title(config: BenchConfig) -> str:
    """The streaming table's heading."""
    return (
        f"\n== streamed, {stream_ms(config):g} ms per stream ({stream_pauses() + 1} frames "
        f"{config.stream_chunk_delay_ms:g} ms apart), {config.stream_jobs} jobs, concurrency "
        f"{config.concurrency} (TTFT: request to first text delta) =="
    )


def measure_streaming(stack: Stack, config: BenchConfig, api_key: str) -> list[CaseResult]:
    """The selected stream cases on their own simulator; returned in the order of CASES."""
    child, base_url = start_simulator(stack, 0.0, api_key, config.stream_chunk_delay_ms)
    try:
        upstream = Upstream(child, base_url, api_key, stream_ms(config), stream=True)
        return measure_latency(stack, upstream, replace(config, cases=config.stream_cases))
    finally:
        stack.stop(child)
