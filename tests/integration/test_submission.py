"""Submissions: bad input is refused naming the field and leaves nothing behind; listing,
idempotency and health."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event

from api_contracts.jobs import JobSubmitRequest
from tests.conftest import ApiServer, count_rows
from worker.celery_app import broker_key_prefix
from worker.producer import JobProducer
from worker.queues import queue_depths
from worker.settings import Settings

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def api_only(
    deployment: Callable[..., Settings], start_api: Callable[[Settings], ApiServer]
) -> tuple[ApiServer, Settings]:
    settings = deployment(max_body_bytes=20_000)
    return start_api(settings), settings


def queued_messages(client: redis.Redis, settings: Settings) -> int:
    depths = queue_depths(client, broker_key_prefix(settings))
    return sum(v for k, v in depths.items() if k != "unacked")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "chat", "request": {}}, "request.messages"),
        ({"kind": "chat", "request": {"messages": []}}, "request.messages"),
        ({"kind": "chat", "request": {"messages": "hi"}}, "request.messages"),
        ({"kind": "chat", "request": {"messages": [{"role": "bot"}]}}, "request.messages[0].role"),
        ({"kind": "chat", "request": {"messages": ["hi"]}}, "request.messages[0]"),
        (
            {"kind": "chat", "request": {"messages": [{"role": "user"}], "model": 3}},
            "request.model",
        ),
        ({"kind": "embedding", "request": CHAT}, "kind"),
        ({"request": CHAT}, "kind"),
        ({"kind": "chat"}, "request"),
        ({"kind": "chat", "request": "hello"}, "request"),
        ({"kind": "response", "request": {}}, "request.input"),
        ({"kind": "response", "request": {"input": 5}}, "request.input"),
        ({"kind": "chat", "request": CHAT, "priority": "urgent"}, "priority"),
        ({"kind": "chat", "request": CHAT, "metadata": "x"}, "metadata"),
        ({"kind": "chat", "request": CHAT, "callback_url": "ftp://x"}, "callback_url"),
        ({"kind": "chat", "request": CHAT, "surprise": 1}, "surprise"),
        # What Postgres cannot store, which reached it and answered 500.
        (
            {"kind": "chat", "request": {"messages": [{"role": "user", "content": "a\x00b"}]}},
            "request.messages[0].content",
        ),
        ({"kind": "chat", "request": CHAT, "metadata": {"tag\x00": "x"}}, "metadata"),
        ({"kind": "chat", "request": CHAT, "metadata": {"half": "\ud800"}}, "metadata.half"),
        ({"kind": "chat", "request": CHAT, "idempotency_key": "key\x00"}, "idempotency_key"),
        ({"kind": "chat", "request": {**CHAT, "max_tokens": 2**70}}, "request.max_tokens"),
        # Python's JSON parser takes NaN and Infinity, which no JSON document may hold.
        ({"kind": "chat", "request": {**CHAT, "temperature": float("nan")}}, "request.temperature"),
        ({"kind": "chat", "request": CHAT, "metadata": {"n": [float("inf")]}}, "metadata.n[0]"),
    ],
)
def test_bad_submission_is_refused_naming_the_field_and_leaves_nothing(
    api_only: tuple[ApiServer, Settings],
    engine: Engine,
    redis_client: redis.Redis,
    body: dict[str, Any],
    field: str,
) -> None:
    api, settings = api_only
    jobs_before = count_rows(engine, "job")
    # Encoded here: the client's own encoder refuses NaN.
    answer = api.client.post(
        "/v1/jobs", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert field in [f["field"] for f in error["fields"]], error
    assert field in error["message"]
    assert count_rows(engine, "job") == jobs_before
    assert queued_messages(redis_client, settings) == 0


def test_malformed_json_is_refused(api_only: tuple[ApiServer, Settings], engine: Engine) -> None:
    api, _ = api_only
    before = count_rows(engine, "job")
    answer = api.client.post(
        "/v1/jobs", content=b'{"kind": "chat",', headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["fields"][0]["field"] == "body"
    assert count_rows(engine, "job") == before


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_gets_413_and_leaves_nothing(
    api_only: tuple[ApiServer, Settings],
    engine: Engine,
    redis_client: redis.Redis,
    chunked: bool,
) -> None:
    api, settings = api_only
    before = count_rows(engine, "job")
    huge = (
        b'{"kind":"chat","request":{"messages":[{"role":"user","content":"'
        + b"x" * 50_000
        + b'"}]}}'
    )
    content: Any = iter([huge[:10_000], huge[10_000:]]) if chunked else huge
    answer = api.client.post(
        "/v1/jobs", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["fields"][0]["field"] == "body"
    assert count_rows(engine, "job") == before
    assert queued_messages(redis_client, settings) == 0


def test_valid_submission_writes_one_row_and_one_message(
    api_only: tuple[ApiServer, Settings], engine: Engine, redis_client: redis.Redis
) -> None:
    api, settings = api_only
    answer = api.client.post("/v1/jobs", json={"kind": "chat", "request": CHAT, "priority": "high"})
    assert answer.status_code == 202
    view = answer.json()
    assert view["priority"] == "high"
    assert count_rows(engine, "job", "id = :j", j=view["id"]) == 1
    depths = queue_depths(redis_client, broker_key_prefix(settings))
    assert depths["gmiq.high"] == 1
    assert depths["gmiq.normal"] == 0


def test_idempotency_key_returns_the_first_job_and_conflicts_on_a_different_body(
    api_only: tuple[ApiServer, Settings], engine: Engine, redis_client: redis.Redis
) -> None:
    api, settings = api_only
    key = f"key-{settings.redis_prefix}"
    first = api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": CHAT}, headers={"Idempotency-Key": key}
    )
    again = api.client.post(
        "/v1/jobs", json={"kind": "chat", "request": CHAT, "idempotency_key": key}
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = {"kind": "chat", "request": {"messages": [{"role": "user", "content": "other"}]}}
    conflict = api.client.post("/v1/jobs", json=other, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409
    assert count_rows(engine, "job", "idempotency_key = :k", k=key) == 1
    assert queued_messages(redis_client, settings) == 1


def test_listing_pages_newest_first_and_filters_by_status(
    api_only: tuple[ApiServer, Settings],
) -> None:
    api, _ = api_only
    meta = {"batch": api.url}
    ids = [
        api.client.post(
            "/v1/jobs", json={"kind": "chat", "request": CHAT, "metadata": meta}
        ).json()["id"]
        for _ in range(5)
    ]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "status": "queued"}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"] if job["metadata"] == meta]
        assert all(job["status"] == "queued" for job in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids[1:]))
    bad = api.client.get("/v1/jobs", params={"status": "done"})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["field"] == "status"
    assert api.client.get("/v1/jobs", params={"cursor": "nonsense"}).status_code == 422
    assert api.client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_submission_answers_the_view_a_read_gives_with_the_stored_request(
    api_only: tuple[ApiServer, Settings],
) -> None:
    api, _ = api_only
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "x-extra": 1}
    body = {"kind": "chat", "request": request, "metadata": {"team": "a"}, "priority": "low"}
    answer = api.client.post("/v1/jobs", json=body)
    assert answer.status_code == 202
    view = answer.json()
    assert view["status"] == "queued"
    assert view["attempts"] == view["tool_calls"] == view["deliveries"] == []
    assert view["request"] == request
    assert api.client.get(f"/v1/jobs/{view['id']}").json() == view


def test_unknown_job_is_404(api_only: tuple[ApiServer, Settings]) -> None:
    api, _ = api_only
    assert api.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.client.get("/v1/jobs/not-a-uuid").status_code == 404
    assert api.client.post("/v1/jobs/not-a-uuid/cancel").status_code == 404


def test_health_and_docs(api_only: tuple[ApiServer, Settings]) -> None:
    api, _ = api_only
    health = api.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"]
    # The routes answer with a ready Response, but the schema still documents the view.
    paths = schema["paths"]
    for path, method, status in [
        ("/v1/jobs", "post", "202"),
        ("/v1/jobs/{job_id}", "get", "200"),
        ("/v1/jobs/{job_id}/cancel", "post", "200"),
    ]:
        documented = paths[path][method]["responses"][status]["content"]["application/json"]
        assert documented["schema"] == {"$ref": "#/components/schemas/JobView"}


def test_reads_are_one_statement_each_outside_any_transaction(
    deployment: Callable[..., Settings], make_producer: Callable[[Settings], JobProducer]
) -> None:
    producer = make_producer(deployment())
    view, _ = producer.submit(JobSubmitRequest(kind="chat", request=CHAT))
    statuses: list[TransactionStatus] = []

    def seen(connection: Any, *_: Any) -> None:
        statuses.append(connection.connection.dbapi_connection.info.transaction_status)

    engine = producer.sessions.kw["bind"]
    event.listen(engine, "after_cursor_execute", seen)
    try:
        assert producer.get(view.id).id == view.id
        assert producer.status(view.id) == "queued"
        assert producer.list(None, 5, None).data  # the database is shared: other jobs too
    finally:
        event.remove(engine, "after_cursor_execute", seen)
    # No BEGIN before and no ROLLBACK after: each poll is one round trip to Postgres.
    assert statuses == [TransactionStatus.IDLE] * 3
