"""Webhook callbacks end to end: real API, real worker processes, and a receiver (a real HTTP
server on 127.0.0.1 in a thread) that verifies signatures with `standardwebhooks`."""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine, text
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import ApiServer, WorkerProcess, count_rows, wait_for
from tests.integration.test_pipeline import poll_terminal
from worker.celery_app import broker_key_prefix
from worker.cli import build_parser
from worker.db import make_engine, make_sessionmaker
from worker.settings import Settings
from worker.simulator import SimulatorServer
from worker.webhook_delivery import DEFER_S, build_deliverer
from worker.webhooks import WEBHOOK_QUEUE

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


OLD_SECRET, NEW_SECRET = new_secret(), new_secret()


@dataclass
class Received:
    """One request the receiver got, and what it answered (None: it hung up on nobody)."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None


class Receiver:
    """A webhook receiver. Each path answers from its script, then its default status; a path
    given secrets answers 401 unless one of them verifies the signature."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.defaults: dict[str, int] = {}
        self.secrets: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.open()

    def open(self) -> None:
        """Listen (again, on the same port after `close`)."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.server = server

    def close(self) -> None:
        """Stop listening: connections are refused until `open`."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path and r.status == 200]

    def received(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def _next(self, path: str) -> dict[str, Any]:
        with self.lock:
            script = self.scripts.get(path, [])
            return script.pop(0) if script else {"status": self.defaults.get(path, 200)}

    def _verifies(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        keys = self.secrets.get(path)
        if keys is None:
            return True
        for key in keys:
            try:
                Webhook(key).verify(body, headers)
                return True
            except WebhookVerificationError:
                continue
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                action = receiver._next(self.path)
                status: int | None = action.get("status", 200)
                if "hang_s" in action:
                    time.sleep(action["hang_s"])
                    status = None
                elif not receiver._verifies(self.path, body, headers):
                    status = 401
                with receiver.lock:
                    receiver.requests.append(Received(self.path, headers, body, status))
                try:
                    self.send_response(status or 200)
                    if "retry_after" in action:
                        self.send_header("Retry-After", action["retry_after"])
                    reply = orjson.dumps({"answer": status})
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (timeout) before we answered

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    if receiver.server is not None:
        receiver.server.shutdown()
        receiver.server.server_close()


def webhook_settings(deployment: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_allow_http": True,
        "webhook_allow_private": True,
        "webhook_secrets": OLD_SECRET,
        "secret_key": "test-secret-key-" + secrets.token_hex(8),
        "webhook_retry_schedule_s": "0,0.2,0.2",
        "webhook_timeout_s": 2.0,
    }
    return deployment(**(values | overrides))


def submit(api: ApiServer, callback_url: str, **extra: Any) -> str:
    answer = api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": CHAT, "callback_url": callback_url, **extra}
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def event_of(engine: Engine, job_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT * FROM webhook_event WHERE job_id = :j"), {"j": uuid.UUID(job_id)}
        ).one_or_none()


def attempts_of(engine: Engine, event_id: uuid.UUID) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT * FROM webhook_attempt WHERE event_id = :e ORDER BY number"),
                {"e": event_id},
            ).all()
        )


def wait_event(engine: Engine, job_id: str, status: str, timeout_s: float = 20) -> Any:
    def settled() -> Any:
        event = event_of(engine, job_id)
        return event if event is not None and event.status == status else None

    return wait_for(settled, timeout_s, f"the event of job {job_id} to be {status}")


def test_each_terminal_job_sends_exactly_one_signed_event(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(deployment)
    api = start_api(settings)
    receiver.secrets["/hook"] = [OLD_SECRET]
    hook = receiver.url("/hook")
    cancelled = submit(api, hook)
    assert api.client.post(f"/v1/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
    no_callback = api.client.post("/v1/jobs", json={"kind": "chat", "request": CHAT}).json()
    start_worker(settings)
    assert poll_terminal(api, no_callback["id"])["status"] == "succeeded"
    sim.script([{"status": 400, "body": {"error": {"message": "bad", "type": "invalid"}}}])
    failed = submit(api, hook)
    assert poll_terminal(api, failed)["status"] == "failed"
    succeeded = submit(api, hook)
    assert poll_terminal(api, succeeded)["status"] == "succeeded"

    wait_for(lambda: len(receiver.accepted("/hook")) == 3, 20, "three accepted events")
    events = {}
    for request in receiver.accepted("/hook"):
        event = Webhook(OLD_SECRET).verify(request.body, request.headers)
        events[event["data"]["id"]] = event
    assert {job: events[job]["type"] for job in events} == {
        cancelled: "job.cancelled",
        failed: "job.failed",
        succeeded: "job.succeeded",
    }

    # The receiver answers before the worker records the attempt.
    def recorded() -> dict[str, Any] | None:
        view: dict[str, Any] = api.client.get(f"/v1/jobs/{succeeded}").json()
        return view if view["deliveries"][0]["status"] == "delivered" else None

    view = wait_for(recorded, 20, "the delivery to be recorded")
    delivery = view.pop("deliveries")[0]
    assert events[succeeded]["data"] == view
    assert delivery["status"] == "delivered"
    assert delivery["attempt_count"] == 1
    assert delivery["last_status_code"] == 200
    assert delivery["next_attempt_at"] is None
    by_job = {orjson.loads(r.body)["data"]["id"]: r for r in receiver.accepted("/hook")}
    assert by_job[succeeded].headers["webhook-id"] == delivery["id"]
    assert len(receiver.received("/hook")) == 3
    for job in (cancelled, failed, succeeded):
        event = event_of(engine, job)
        assert event.status == "delivered"
        assert count_rows(engine, "webhook_attempt", "event_id = :e", e=event.id) == 1
    assert event_of(engine, no_callback["id"]) is None


def test_a_jobs_only_worker_leaves_deliveries_to_a_webhooks_worker(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
    redis_client: redis.Redis,
) -> None:
    settings = webhook_settings(deployment)
    api = start_api(settings)
    start_worker(settings, queues="jobs")
    job = submit(api, receiver.url("/split"))
    assert poll_terminal(api, job)["status"] == "succeeded"
    # The jobs-only worker's dispatcher publishes the delivery; nobody there consumes it.
    webhooks_queue = f"{broker_key_prefix(settings)}{WEBHOOK_QUEUE}"
    wait_for(lambda: redis_client.llen(webhooks_queue) >= 1, 20, "the delivery to be queued")
    assert receiver.received("/split") == []
    assert event_of(engine, job).status == "pending"

    start_worker(settings, queues="webhooks")
    wait_event(engine, job, "delivered")
    assert len(receiver.accepted("/split")) == 1


def test_a_worker_whose_calls_are_all_busy_still_delivers(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    # One call slot and two Celery threads (one claim thread, one delivery). The jobs waiting
    # for the slot wait in the call loop, not on the threads, so the delivery gets its thread
    # while the slot is still busy.
    settings = webhook_settings(deployment, claim_threads=1, webhook_concurrency=1)
    start_worker(settings, concurrency=1)
    api = start_api(settings)
    sim.script([{"status": 200, "delay_ms": 8000}])
    busy = api.client.post("/v1/jobs", json={"kind": "chat", "request": CHAT}).json()["id"]
    wait_for(lambda: sim.requests(), 20, "the busy job's call")
    for _ in range(4):  # as many as the worker's threads, and more
        api.client.post("/v1/jobs", json={"kind": "chat", "request": CHAT})
    receiver.secrets["/while-busy"] = [OLD_SECRET]
    hooked = submit(api, receiver.url("/while-busy"))
    assert api.client.post(f"/v1/jobs/{hooked}/cancel").json()["status"] == "cancelled"

    wait_event(engine, hooked, "delivered", timeout_s=5)
    assert len(receiver.accepted("/while-busy")) == 1
    assert api.client.get(f"/v1/jobs/{busy}").json()["status"] == "running"


def test_a_worker_with_no_free_delivery_slot_defers_the_attempt_unmade(
    deployment: Callable[..., Settings],
    start_api: Callable[[Settings], ApiServer],
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(deployment, webhook_concurrency=2)
    api = start_api(settings)
    receiver.secrets["/busy"] = [OLD_SECRET]
    job = submit(api, receiver.url("/busy"))
    assert api.client.post(f"/v1/jobs/{job}/cancel").json()["status"] == "cancelled"
    event = event_of(engine, job)
    own_engine = make_engine(settings.database_url, pool_size=2)
    deliverer = build_deliverer(
        settings, make_sessionmaker(own_engine), lambda *_: None, "deferring-worker"
    )
    try:
        for _ in range(settings.webhook_concurrency):  # every slot busy with other deliveries
            assert deliverer.slots.acquire(blocking=False)
        assert deliverer.deliver(event.id, 1) == "deferred"
        deferred = event_of(engine, job)
        assert (deferred.status, deferred.attempt_count) == ("pending", 0)
        assert deferred.next_attempt_at > event.next_attempt_at + timedelta(seconds=DEFER_S / 2)
        assert attempts_of(engine, event.id) == []
        assert receiver.received("/busy") == []

        deliverer.slots.release()
        assert deliverer.deliver(event.id, 1) == "delivered"
        assert event_of(engine, job).status == "delivered"
        assert len(receiver.accepted("/busy")) == 1
    finally:
        deliverer.close()
        own_engine.dispose()


def test_delivery_retries_through_500_timeout_and_refusal_then_succeeds(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(
        deployment, webhook_retry_schedule_s="0,0.2,1,0.6", webhook_timeout_s=0.5
    )
    start_worker(settings)
    api = start_api(settings)
    receiver.scripts["/flaky"] = [{"status": 500, "retry_after": "1"}, {"hang_s": 2.0}]
    job = submit(api, receiver.url("/flaky"))

    def attempt_done(number: int) -> bool:
        event = event_of(engine, job)
        rows = attempts_of(engine, event.id) if event is not None else []
        return len(rows) >= number and rows[number - 1].outcome != "running"

    wait_for(lambda: attempt_done(2), 20, "the second attempt (a timeout) to finish")
    receiver.close()
    wait_for(lambda: attempt_done(3), 20, "the third attempt (refused) to finish")
    receiver.open()
    event = wait_event(engine, job, "delivered")

    rows = attempts_of(engine, event.id)
    assert [(r.number, r.outcome, r.status_code) for r in rows] == [
        (1, "retry", 500),
        (2, "retry", None),
        (3, "retry", None),
        (4, "delivered", 200),
    ]
    assert "500" in rows[0].response_excerpt
    assert rows[0].latency_ms is not None
    assert rows[1].error.startswith("timeout")
    assert rows[2].error.startswith("connection")
    # Retry-After: 1 outweighed the scheduled 0.2 s.
    assert (rows[1].started_at - rows[0].finished_at).total_seconds() >= 0.9
    accepted = receiver.accepted("/flaky")
    assert len(accepted) == 1
    assert {r.headers["webhook-id"] for r in receiver.received("/flaky")} == {str(event.id)}
    assert Webhook(OLD_SECRET).verify(accepted[0].body, accepted[0].headers)["data"]["id"] == job


def run_cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`gmiq webhooks ...`, in this process (a fresh interpreter costs seconds)."""
    parsed = build_parser().parse_args(["webhooks", *args])
    assert parsed.func(parsed, settings) == 0
    return capsys.readouterr().out


def test_exhausted_events_are_dead_lettered_and_redelivered_after_recovery(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = webhook_settings(deployment)
    start_worker(settings)
    api = start_api(settings)
    before = datetime.now(UTC) - timedelta(seconds=5)
    receiver.defaults |= {"/down": 500, "/gone": 410}
    first, second = submit(api, receiver.url("/down")), submit(api, receiver.url("/down"))
    gone = submit(api, receiver.url("/gone"))
    dead = [wait_event(engine, job, "failed") for job in (first, second, gone)]
    assert [d.attempt_count for d in dead] == [3, 3, 1]
    assert dead[0].failure_reason == "gave up after 3 attempts"
    assert "410" in dead[2].failure_reason

    listed = api.client.get("/v1/webhooks/deliveries", params={"status": "failed"}).json()
    assert {str(d.id) for d in dead} <= {d["id"] for d in listed["data"]}
    assert str(dead[0].id) in run_cli(settings, capsys, "failed")
    detail = api.client.get(f"/v1/webhooks/deliveries/{dead[0].id}").json()
    assert [a["status_code"] for a in detail["attempts"]] == [500, 500, 500]
    refused = api.client.get("/v1/webhooks/deliveries", params={"status": "x"})
    assert refused.status_code == 422
    assert [f["field"] for f in refused.json()["error"]["fields"]] == ["status"]
    # A time without an offset is UTC, through the API as through the CLI.
    naive_since = (before - timedelta(seconds=1)).replace(tzinfo=None).isoformat()
    listed_since = api.client.get(
        "/v1/webhooks/deliveries", params={"status": "failed", "since": naive_since}
    ).json()
    assert {str(d.id) for d in dead} <= {d["id"] for d in listed_since["data"]}

    receiver.defaults["/down"] = 200
    again = api.client.post(f"/v1/webhooks/deliveries/{dead[0].id}/redeliver")
    assert again.status_code == 202, again.text
    assert wait_event(engine, first, "delivered").attempt_count == 4
    redelivered = api.client.post("/v1/webhooks/redeliver", params={"since": before.isoformat()})
    assert redelivered.json()["count"] == 2  # the second, and the 410 one
    assert wait_event(engine, second, "delivered").attempt_count == 4
    assert wait_event(engine, gone, "failed").attempt_count == 2
    assert "queued 1 deliveries" in run_cli(
        settings, capsys, "redeliver", "--since", before.isoformat()
    )
    missing = api.client.post(f"/v1/webhooks/deliveries/{uuid.uuid4()}/redeliver")
    assert missing.status_code == 404
    assert len(receiver.accepted("/down")) == 2


def test_worker_killed_between_attempts_still_delivers_once(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(deployment, webhook_retry_schedule_s="0,2")
    first = start_worker(settings)
    api = start_api(settings)
    receiver.scripts["/once"] = [{"status": 503}]
    job = submit(api, receiver.url("/once"))
    wait_for(lambda: len(receiver.received("/once")) == 1, 20, "the first attempt")
    wait_for(
        lambda: (e := event_of(engine, job)) is not None and e.last_status_code == 503,
        20,
        "the first attempt to be recorded",
    )
    first.kill()
    start_worker(settings)

    event = wait_event(engine, job, "delivered")
    assert [(r.outcome, r.status_code) for r in attempts_of(engine, event.id)] == [
        ("retry", 503),
        ("delivered", 200),
    ]
    assert len(receiver.accepted("/once")) == 1
    assert len(receiver.received("/once")) == 2


def test_old_and_new_secrets_both_verify_and_a_job_secret_replaces_them(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(deployment, webhook_secrets=f"{NEW_SECRET},{OLD_SECRET}")
    start_worker(settings)
    api = start_api(settings)
    receiver.secrets |= {"/old": [OLD_SECRET], "/new": [NEW_SECRET]}
    job_secret = new_secret()
    receiver.secrets["/own"] = [job_secret]
    submit(api, receiver.url("/old"))
    submit(api, receiver.url("/new"))
    own = submit(api, receiver.url("/own"), callback_secret=job_secret)
    for path in ("/old", "/new", "/own"):
        wait_for(lambda p=path: receiver.accepted(p), 20, f"an accepted event at {path}")

    signature = receiver.accepted("/old")[0].headers["webhook-signature"]
    assert len(signature.split(" ")) == 2
    request = receiver.accepted("/own")[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(request.body, request.headers)
    view = api.client.get(f"/v1/jobs/{own}")
    assert job_secret not in view.text
    assert "callback_secret" not in view.json()
    with engine.connect() as connection:
        sealed = connection.execute(
            text("SELECT sealed FROM callback_secret WHERE job_id = :j"), {"j": uuid.UUID(own)}
        ).scalar_one()
    assert job_secret not in sealed
    assert job_secret.removeprefix("whsec_") not in sealed


def test_delivery_checks_the_address_again_and_refuses_a_private_one(
    deployment: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    start_api: Callable[[Settings], ApiServer],
    sim: SimulatorServer,
    receiver: Receiver,
    engine: Engine,
) -> None:
    settings = webhook_settings(deployment)
    # The API allowed it; the worker (as if DNS had changed since) does not.
    start_worker(settings.model_copy(update={"webhook_allow_private": False}))
    api = start_api(settings)
    job = submit(api, receiver.url("/inward"))
    event = wait_event(engine, job, "failed")
    assert "127.0.0.1" in event.failure_reason
    assert "loopback" in event.failure_reason
    assert receiver.received("/inward") == []


@pytest.fixture
def strict_api(
    deployment: Callable[..., Settings], start_api: Callable[[Settings], ApiServer]
) -> ApiServer:
    return start_api(deployment(webhook_secrets=OLD_SECRET))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/hook",
        "https://[::1]:8443/hook",
        "https://localhost/hook",
        "http://example.com/hook",
    ],
)
def test_callback_url_on_a_private_address_is_refused_before_anything_is_written(
    strict_api: ApiServer, engine: Engine, url: str
) -> None:
    before = count_rows(engine, "job")
    answer = strict_api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": CHAT, "callback_url": url}
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert [f["field"] for f in error["fields"]] == ["callback_url"]
    assert error["message"].startswith("callback_url: ")
    assert count_rows(engine, "job") == before


def test_malformed_callback_secret_is_refused_without_being_echoed(
    strict_api: ApiServer, engine: Engine
) -> None:
    before = count_rows(engine, "job")
    secret = "whsec_not-base64-" + secrets.token_hex(8)
    answer = strict_api.client.post(
        "/v1/jobs",
        json={
            "kind": "chat",
            "request": CHAT,
            "callback_url": "https://a.test/",
            "callback_secret": secret,
        },
    )
    assert answer.status_code == 422
    assert [f["field"] for f in answer.json()["error"]["fields"]] == ["callback_secret"]
    assert secret not in answer.text
    assert count_rows(engine, "job") == before
