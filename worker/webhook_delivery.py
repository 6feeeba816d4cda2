"""The delivery use case: take one attempt of an event, POST it signed to a checked address,
record what came back and what comes next; and the dispatcher that publishes due attempts.

The schedule lives in Postgres (`next_attempt_at`), never in Celery ETAs, so restarts lose
nothing. No transaction is held across the POST.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx2
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from worker import repository, webhook_store
from worker.db import unit_of_work
from worker.queues import PUBLISH_RETRY_POLICY
from worker.retry_policy import parse_retry_after
from worker.secret_box import SecretBox, SecretUnreadableError
from worker.settings import Settings
from worker.ssrf import (
    CallbackRefusedError,
    Resolver,
    Target,
    UnresolvableHostError,
    check_callback_url,
    resolve_host,
)
from worker.views import job_view
from worker.webhook_store import AttemptResult, ClaimedEvent
from worker.webhooks import (
    DELIVER_WEBHOOK_TASK,
    WEBHOOK_QUEUE,
    build_event_body,
    decide_after_attempt,
    parse_secrets,
    signed_headers,
)

log = logging.getLogger(__name__)

BATCH = 500
# How soon an attempt refused for lack of a free delivery slot is published again.
DEFER_S = 1.0
USER_AGENT = "gmiq-webhooks/0.1"

Publisher = Callable[[uuid.UUID, int], None]


def publish_delivery(app: Celery, event_id: uuid.UUID, number: int) -> None:
    """Put attempt `number` of an event on the webhook queue; raises if Redis cannot take it."""
    app.send_task(
        DELIVER_WEBHOOK_TASK,
        args=[str(event_id), number],
        queue=WEBHOOK_QUEUE,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


class WebhookClient:
    """POSTs events; never follows redirects, never uses proxies from the environment (they
    would bypass the address check), reads at most the first bytes of an answer."""

    def __init__(self, timeout_s: float, excerpt_bytes: int, max_connections: int = 100) -> None:
        self._excerpt_bytes = excerpt_bytes
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            # No keep-alive: connections are made to checked addresses, and a pooled TLS
            # connection to one address must not carry another host's request.
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=0),
            headers={"user-agent": USER_AGENT},
        )

    def post(self, url: str, target: Target, headers: dict[str, str], body: str) -> AttemptResult:
        """POST to the target's checked address (Host and TLS name stay the URL's); transport
        failures become the attempt's error."""
        request_url = httpx2.URL(url)
        extensions: dict[str, str] = {}
        if target.address is not None:
            headers = {**headers, "host": request_url.netloc.decode("ascii")}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            request_url = request_url.copy_with(host=str(target.address))
        started = time.monotonic()
        try:
            with self._client.stream(
                "POST", request_url, content=body.encode(), headers=headers, extensions=extensions
            ) as response:
                excerpt = self._read_excerpt(response)
                latency_ms = (time.monotonic() - started) * 1000
                retry_after = parse_retry_after(
                    {k.lower(): v for k, v in response.headers.items()}, datetime.now(UTC)
                )
                return AttemptResult(response.status_code, latency_ms, excerpt, None, retry_after)
        except httpx2.TimeoutException as exc:
            error = f"timeout: {type(exc).__name__}"
        except httpx2.HTTPError as exc:
            error = f"connection: {type(exc).__name__}: {exc}"
        return AttemptResult(None, (time.monotonic() - started) * 1000, None, error, None)

    def _read_excerpt(self, response: httpx2.Response) -> str:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self._excerpt_bytes:
                break
        excerpt = b"".join(chunks)[: self._excerpt_bytes]
        return excerpt.decode("utf-8", errors="replace").replace("\x00", "")

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()


@dataclass(frozen=True)
class DeliveryConfig:
    """The operator's delivery settings."""

    schedule_s: tuple[float, ...]
    thin_events: bool
    allow_http: bool
    allow_private: bool
    redispatch_after_s: float


@dataclass(frozen=True)
class _Prepared:
    claim: ClaimedEvent
    body: str
    sealed_secret: str | None


@dataclass
class WebhookDeliverer:
    """Delivers attempts and dispatches due ones; shared by all threads of a worker."""

    sessions: sessionmaker[Session]
    client: WebhookClient
    config: DeliveryConfig
    operator_keys: list[bytes]
    box: SecretBox
    publish: Publisher
    worker_id: str
    # Free delivery slots of this process: a full process defers, so job threads stay free.
    slots: threading.BoundedSemaphore
    resolve: Resolver = resolve_host
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def deliver(self, event_id: uuid.UUID, number: int) -> str:
        """Make attempt `number` of the event; returns what happened (`skipped` for a
        duplicate or stale message, `deferred` when this process has no free slot)."""
        if not self.slots.acquire(blocking=False):
            with unit_of_work(self.sessions) as session:
                webhook_store.defer_event(session, event_id, number, DEFER_S)
            return "deferred"
        try:
            prepared = self._claim(event_id, number)
            if prepared is None:
                return "skipped"
            result, refused = self._attempt(prepared)
            claim = prepared.claim
            decision = decide_after_attempt(
                claim.number - claim.round_start,
                self.config.schedule_s,
                result.status_code,
                result.retry_after_s,
                refused,
            )
            with unit_of_work(self.sessions) as session:
                stored = webhook_store.record_attempt(session, claim, result, decision)
            return decision.verdict if stored else "superseded"
        finally:
            self.slots.release()

    def _claim(self, event_id: uuid.UUID, number: int) -> _Prepared | None:
        with unit_of_work(self.sessions) as session:
            claim = webhook_store.claim_attempt(
                session, event_id, number, self.worker_id, self.config.redispatch_after_s
            )
            if claim is None:
                return None
            body = claim.body
            if body is None:
                body = self._build_body(session, claim)
                webhook_store.set_event_body(session, claim.id, body)
            sealed = webhook_store.get_callback_secret(session, claim.job_id)
        return _Prepared(claim, body, sealed)

    def _build_body(self, session: Session, claim: ClaimedEvent) -> str:
        record = repository.get_job_record(session, claim.job_id)
        assert record is not None  # the event's foreign key keeps the job
        view = job_view(record["job"], record["tool_calls"], record["usage"], record["attempts"])
        data = view.model_dump(mode="json", exclude={"deliveries"})
        return build_event_body(claim.type, claim.created_at, data, self.config.thin_events)

    def _attempt(self, prepared: _Prepared) -> tuple[AttemptResult, str | None]:
        """The POST's result, and why the event must fail at once, if it must."""
        claim = prepared.claim
        try:
            keys = self._keys(prepared.sealed_secret)
            target = check_callback_url(
                claim.url, self.config.allow_http, self.config.allow_private, self.resolve
            )
        except UnresolvableHostError as exc:  # DNS may answer later: retry on schedule
            return AttemptResult(None, None, None, str(exc), None), None
        except (CallbackRefusedError, SecretUnreadableError) as exc:
            return AttemptResult(None, None, None, str(exc), None), str(exc)
        headers = signed_headers(keys, str(claim.id), self.clock(), prepared.body)
        return self.client.post(claim.url, target, headers, prepared.body), None

    def _keys(self, sealed_secret: str | None) -> list[bytes]:
        """The job's own secret replaces the operator's; without either, nothing is sent."""
        if sealed_secret is not None:
            return parse_secrets(self.box.open(sealed_secret))
        if not self.operator_keys:
            raise CallbackRefusedError("no signing secret: set GMIQ_WEBHOOK_SECRETS")
        return self.operator_keys

    def dispatch(self) -> int:
        """Publish the attempts that are due. If publishing fails the transaction rolls back,
        so the events stay due."""
        with unit_of_work(self.sessions) as session:
            due = webhook_store.take_due_events(session, self.config.redispatch_after_s, BATCH)
            for event_id, number in due:
                self.publish(event_id, number)
            return len(due)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def build_deliverer(
    settings: Settings, sessions: sessionmaker[Session], publish: Publisher, worker_id: str
) -> WebhookDeliverer:
    """The deliverer from settings; the secrets go to it and nowhere else."""
    raw = settings.webhook_secrets.get_secret_value() if settings.webhook_secrets else ""
    return WebhookDeliverer(
        sessions=sessions,
        client=WebhookClient(settings.webhook_timeout_s, settings.webhook_response_excerpt_bytes),
        config=DeliveryConfig(
            schedule_s=settings.webhook_retry_schedule_s,
            thin_events=settings.webhook_thin_events,
            allow_http=settings.webhook_allow_http,
            allow_private=settings.webhook_allow_private,
            redispatch_after_s=settings.webhook_redispatch_after_s,
        ),
        operator_keys=parse_secrets(raw),
        box=SecretBox.from_settings(settings),
        publish=publish,
        worker_id=worker_id,
        slots=threading.BoundedSemaphore(settings.webhook_concurrency),
    )
