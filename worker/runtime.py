"""Wires one worker process: engine, upstream clients, job runner, call loop and background
duties."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis
from celery import Celery
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from worker import repository
from worker.call_loop import CallLoop
from worker.db import make_engine, make_sessionmaker, open_connections
from worker.in_flight import InFlight
from worker.job_events import JobEventPublisher
from worker.jobs import JobRunner
from worker.llm_client import AsyncLLMClient
from worker.maintenance import Maintenance, run_every
from worker.queues import publish_job, redis_client_url, reuse_broker_clients
from worker.recording import RetryConfig
from worker.settings import Settings
from worker.timeouts import CallLimits
from worker.webhook_delivery import WebhookDeliverer, build_deliverer, publish_delivery

log = logging.getLogger(__name__)

# How long a stopping worker waits for the claim statements already running (one statement
# each; past this, Postgres is hanging and their jobs are left to the reaper).
_CLAIMS_END_S = 5.0


@dataclass
class WorkerRuntime:
    """Everything a worker process shares between its task threads."""

    runner: JobRunner
    calls: CallLoop
    maintenance: Maintenance
    settings: Settings
    redis_client: redis.Redis
    webhooks: WebhookDeliverer
    stop: threading.Event = field(default_factory=threading.Event)
    # When a SIGTERM's grace runs out, on the monotonic clock.
    grace_ends: float | None = None
    # Set once Celery has returned: from then on `shutdown` handles the grace.
    celery_stopped: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Lock = field(default_factory=threading.Lock)

    def announce(self) -> None:
        """Mark this worker alive in Redis for operators (expires if the worker dies)."""
        key = worker_key(self.settings.redis_prefix, self.runner.worker_id)
        self.redis_client.set(
            key,
            str(len(self.runner.in_flight.snapshot())),
            ex=int(max(self.settings.heartbeat_s * 3, 5)),
        )

    def warm(self, connections: int) -> None:
        """Before taking messages: connect the pools and compile the hot statements, so the
        first jobs after a start are not slowed by every thread connecting at once. A service
        that is down is not fatal here: the jobs' own retries deal with that."""
        try:
            open_connections(self.runner.sessions, connections)
            with self.runner.sessions() as session:
                repository.warm_statements(session, self.runner.worker_id)
                session.rollback()
            self.redis_client.ping()
            if self.runner.events is not None:
                self.runner.events.ping()
        except (SQLAlchemyError, RedisError, OSError) as exc:
            log.warning("warm-up incomplete: %s", type(exc).__name__)

    def heartbeat(self) -> None:
        """Renew leases, then announce; a Redis outage must not stop the lease renewal."""
        self.maintenance.renew_leases()
        self.announce()

    def start_background(self) -> None:
        """Start the heartbeat, reaper and dispatcher loops."""
        s = self.settings
        run_every(s.heartbeat_s, self.heartbeat, self.stop, "heartbeat")
        run_every(s.dispatch_interval_s, self.maintenance.reap, self.stop, "reaper")
        run_every(s.dispatch_interval_s, self.maintenance.dispatch, self.stop, "dispatcher")
        run_every(s.dispatch_interval_s, self.webhooks.dispatch, self.stop, "webhook-dispatcher")

    def begin_shutdown(self) -> None:
        """On SIGTERM Celery stops taking messages, and so do the call loop's takers; running
        calls get the grace to finish. Past it we hand the remaining jobs back (they run again
        at once elsewhere) and, if Celery is still waiting on a task, cold-stop it."""
        if self.grace_ends is not None:  # a second SIGTERM changes nothing
            return
        self.grace_ends = time.monotonic() + self.settings.shutdown_grace_s
        # Not here: this runs in Celery's signal handler, on the consumer's thread, which may
        # be inside `CallLoop.offer` holding the loop's lock.
        threading.Thread(target=self.calls.stop_taking, name="gmiq-stop-taking").start()

        def after_grace() -> None:
            if self.stop.wait(self.settings.shutdown_grace_s):
                return
            with self.stopping:
                if self.celery_stopped.is_set():  # `shutdown` has it in hand
                    return
                self.calls.stop_claiming(_CLAIMS_END_S)
                released = self.maintenance.release_in_flight()
                log.warning("shutdown grace over: handed back %d running jobs", released)
                os.kill(os.getpid(), signal.SIGQUIT)

        threading.Thread(target=after_grace, name="gmiq-shutdown-grace", daemon=True).start()

    def shutdown(self) -> None:
        """Once Celery has stopped: let the calls in flight finish within the grace, then stop
        the loops, hand back anything still running and close the clients."""
        with self.stopping:
            self.celery_stopped.set()
        # Celery may have stopped without a signal (a remote shutdown, a consumer that gave up).
        self.calls.stop_taking()
        grace_ends = self.grace_ends or time.monotonic() + self.settings.shutdown_grace_s
        if not self.calls.drain(max(0.0, grace_ends - time.monotonic())):
            log.warning("shutdown grace over with %d calls in flight", self.calls.in_flight())
        self.stop.set()
        self.calls.stop_claiming(_CLAIMS_END_S)
        try:
            released = self.maintenance.release_in_flight()
            if released:
                log.warning("handed back %d running jobs", released)
        except Exception as exc:  # the database may be the reason we are stopping
            log.warning("could not hand back running jobs: %s", type(exc).__name__)
        self.calls.close()
        self.webhooks.close()
        if self.runner.events is not None:
            self.runner.events.close()
        self.redis_client.delete(worker_key(self.settings.redis_prefix, self.runner.worker_id))


def build_runtime(settings: Settings, app: Celery, concurrency: int) -> WorkerRuntime:
    """Build the runtime from settings, with up to `concurrency` jobs in flight; the API key
    goes to the upstream clients and nowhere else."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    reuse_broker_clients()  # publishes (dispatcher) and acks (every job)
    # Connections are held only to read or write, never across an upstream call, so a pool far
    # smaller than the concurrency suffices.
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    sessions = make_sessionmaker(engine)
    key = settings.gmi_api_key.get_secret_value() if settings.gmi_api_key else None
    limits = CallLimits(
        settings.connect_timeout_s, settings.read_timeout_s, settings.call_timeout_s
    )

    def make_async_client() -> AsyncLLMClient:
        return AsyncLLMClient(settings.gmi_base_url, key, limits, settings.max_connections)

    in_flight = InFlight()
    runner = JobRunner(
        sessions=sessions,
        limits=limits,
        retry=RetryConfig(settings.max_attempts, settings.backoff_base_s, settings.backoff_cap_s),
        worker_id=worker_id,
        lease_s=settings.lease_s,
        redispatch_after_s=settings.redispatch_after_s,
        in_flight=in_flight,
        events=build_event_publisher(settings),
    )
    calls = CallLoop(
        runner,
        make_async_client,
        capacity=concurrency,
    )
    maintenance = Maintenance(
        sessions=sessions,
        publish=lambda message: publish_job(app, message),
        in_flight=in_flight,
        worker_id=worker_id,
        lease_s=settings.lease_s,
        max_lost_attempts=settings.max_lost_attempts,
        redispatch_after_s=settings.redispatch_after_s,
    )
    return WorkerRuntime(
        runner=runner,
        calls=calls,
        maintenance=maintenance,
        settings=settings,
        redis_client=redis.Redis.from_url(
            redis_client_url(settings.redis_url), socket_timeout=5, socket_connect_timeout=5
        ),
        webhooks=build_deliverer(
            settings,
            sessions,
            lambda event, number: publish_delivery(app, event, number),
            worker_id,
        ),
    )


def build_event_publisher(settings: Settings) -> JobEventPublisher:
    """Job event streams on the deployment's Redis; short timeouts, since a slow Redis must not
    slow the upstream reads that publish to it."""
    client: redis.Redis = redis.Redis.from_url(
        redis_client_url(settings.redis_url), socket_timeout=1, socket_connect_timeout=1
    )
    return JobEventPublisher(
        client, settings.redis_prefix, settings.events_maxlen, settings.events_ttl_s
    )


_current: WorkerRuntime | None = None


def install_runtime(runtime: WorkerRuntime) -> None:
    """Make the runtime the one this process's tasks use."""
    global _current
    _current = runtime


def installed() -> WorkerRuntime | None:
    """The installed runtime, or None in a process that runs no worker."""
    return _current


def current_runtime() -> WorkerRuntime:
    """The installed runtime; tasks fail loudly if the worker was started without one."""
    if _current is None:
        raise RuntimeError("no worker runtime installed; start workers with `gmiq worker`")
    return _current


def worker_key(prefix: str, worker_id: str) -> str:
    """The Redis key a live worker keeps fresh; `gmiq queues` and tests list these."""
    return f"{prefix}:worker:{worker_id}"
