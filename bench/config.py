"""What a run is set to do (`BenchConfig`, from `python -m bench.run`'s options), the upstream a
case calls (`Upstream`: a simulator process, plain or streaming), and what the processes under
test are given: their environment, settings and the run tag that marks their jobs."""

from __future__ import annotations

from dataclasses import dataclass

from bench.stack import Child, Stack
from worker.settings import Settings

# The cases run at each upstream latency and, with "streaming" selected, on the streaming
# simulator; printed in this order. `naive` posts with httpx2, `naive-httpx` with httpx 0.28 (the
# baseline as issue #6 defines it; httpx2 is the stronger one).
CASES = ("limit", "naive", "naive-httpx", "gmiq-api", "gmiq-producer", "gmiq-paced")


@dataclass(frozen=True)
class BenchConfig:
    """The run's knobs (see `python -m bench.run --help`)."""

    jobs: int
    concurrency: int
    latencies_ms: tuple[float, ...]
    producer_threads: int
    paced_rate: float
    paced_jobs: int
    naive_client: str
    client: str
    deadline_s: float
    cases: tuple[str, ...]
    poll_rows: int
    poll_requests: int
    poll_concurrency: int
    # The paced polling phase's GETs/s; None: half the minimal handler's throughput.
    poll_rate: float | None = None
    # Drain cases (bench.scaling), at the last latency: worker processes to compare, and the
    # single-process case's calls in flight and jobs.
    scale_workers: tuple[int, ...] = (1, 2, 4)
    wide_concurrency: int = 1000
    wide_jobs: int = 4000
    # Streaming case (bench.streaming): its cases, jobs and the simulator's pause between SSE
    # frames (8 pauses in this call's stream: 62.5 ms makes each stream last 500 ms).
    stream_cases: tuple[str, ...] = CASES
    stream_jobs: int = 2000
    stream_chunk_delay_ms: float = 62.5


@dataclass(frozen=True)
class Upstream:
    """The simulator the cases call. `latency_ms` is what one call takes there (a stream: until
    its last frame), which the added latency leaves out; `stream` makes every call streamed."""

    child: Child
    base_url: str
    api_key: str
    latency_ms: float
    stream: bool = False

    @property
    def label(self) -> str:
        """`0`, `500` (ms), or `stream`: names the simulator in run tags and logs."""
        return "stream" if self.stream else f"{self.latency_ms:g}"


def worker_env(stack: Stack, upstream: Upstream, concurrency: int) -> dict[str, str]:
    """A gmiq worker's or API's environment: the run's services and this upstream."""
    return stack.env(
        GMIQ_GMI_BASE_URL=upstream.base_url,
        GMIQ_GMI_API_KEY=upstream.api_key,
        GMIQ_WORKER_CONCURRENCY=str(concurrency),
        GMIQ_READ_TIMEOUT_S="60",
    )


def bench_settings(stack: Stack, upstream: Upstream) -> Settings:
    """The settings of the producer the bench runs in-process."""
    return Settings(
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        redis_prefix=stack.redis_prefix,
        gmi_base_url=upstream.base_url,
        gmi_api_key=upstream.api_key,
    )


def run_tag(stack: Stack, case: str, upstream: Upstream) -> str:
    """The tag on a case's jobs (or naive rows), unique within the run."""
    return f"{stack.tag}-{case}-{upstream.label}"
