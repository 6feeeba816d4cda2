"""The intake: submissions that arrive together share one INSERT and one publish, and one job
cannot fail the others of its batch."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError

from api_contracts.messages import JobMessage
from tests.conftest import count_rows, job_message
from worker.db import make_sessionmaker
from worker.intake import Intake, NewRow


class HeldPublisher:
    """Records each batch it is handed; holds the first until released, so the jobs submitted
    meanwhile queue up behind it. `fail` makes every publish raise, as Redis being down does."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, messages: Sequence[JobMessage]) -> None:
        self.batches.append([message.job_id for message in messages])
        if len(self.batches) == 1:
            self.holding.set()
            assert self.release.wait(10), "the test never released the first publish"
        if self.fail:
            raise ConnectionError("redis is down")


@pytest.fixture
def made(engine: Engine) -> Iterator[list[uuid.UUID]]:
    """Ids of the jobs a test makes; deleted after it, so no later test's worker runs them."""
    ids: list[uuid.UUID] = []
    yield ids
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM job WHERE id = ANY(:ids)"), {"ids": ids})


def held_batch(
    engine: Engine, publisher: HeldPublisher, messages: list[JobMessage], made: list[uuid.UUID]
) -> list[Future[NewRow | None]]:
    """Submit the first message alone, and the rest while its publish is held: they form the
    next batch."""
    made.extend(message.job_id for message in messages)
    intake = Intake(make_sessionmaker(engine), publisher, 600.0, lanes=1)
    try:
        first = intake.submit(messages[0])
        assert publisher.holding.wait(10), "the first job was never published"
        rest = [intake.submit(message) for message in messages[1:]]
        publisher.release.set()
        for future in [first, *rest]:
            future.exception(10)  # waits for it to settle, either way
        return [first, *rest]
    finally:
        intake.close()


def test_jobs_that_arrive_while_a_batch_is_written_share_the_next_statement(
    engine: Engine, made: list[uuid.UUID]
) -> None:
    publisher = HeldPublisher()
    messages = [job_message() for _ in range(11)]
    futures = held_batch(engine, publisher, messages, made)
    assert [len(batch) for batch in publisher.batches] == [1, 10]
    for message, future in zip(messages, futures, strict=True):
        row = future.result()
        assert row is not None
        assert (row["id"], row["status"]) == (message.job_id, "queued")
    assert count_rows(engine, "job", "id = ANY(:ids)", ids=made) == 11


def test_one_idempotency_key_twice_in_a_batch_makes_one_job(
    engine: Engine, made: list[uuid.UUID]
) -> None:
    key = f"twice-{uuid.uuid4()}"
    messages = [job_message()] + [
        job_message().model_copy(update={"idempotency_key": key}) for _ in range(2)
    ]
    publisher = HeldPublisher()
    futures = held_batch(engine, publisher, messages, made)
    first, second = futures[1].result(), futures[2].result()
    assert publisher.batches[1] == [messages[1].job_id]
    assert first is not None
    assert first["id"] == messages[1].job_id
    # The caller of the second looks the key up and gets the first job (see `JobProducer`).
    assert second is None
    assert count_rows(engine, "job", "idempotency_key = :k", k=key) == 1


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("a\x00b", DataError),  # refused by Postgres
        ("a\ud800b", TypeError),  # refused by the JSON encoder, before Postgres
    ],
)
def test_a_job_that_cannot_be_written_fails_alone_and_the_rest_of_its_batch_is_queued(
    engine: Engine, made: list[uuid.UUID], content: str, error: type[Exception]
) -> None:
    # Validation refuses both (`check_storable`); the intake must not depend on it.
    unstorable = job_message().model_copy(
        update={"request": {"messages": [{"role": "user", "content": content}]}}
    )
    messages = [job_message(), job_message(), unstorable, job_message()]
    publisher = HeldPublisher()
    futures = held_batch(engine, publisher, messages, made)
    assert isinstance(futures[2].exception(), error)
    assert all(futures[n].result() is not None for n in (0, 1, 3))
    good = [messages[n].job_id for n in (1, 3)]
    assert publisher.batches[1] == good
    assert count_rows(engine, "job", "id = ANY(:ids)", ids=made) == 3


def test_a_batch_redis_cannot_take_is_left_due_for_the_dispatcher(
    engine: Engine, made: list[uuid.UUID]
) -> None:
    messages = [job_message() for _ in range(4)]
    futures = held_batch(engine, HeldPublisher(fail=True), messages, made)
    # Accepted: the rows are committed, and the dispatcher publishes them at its next pass
    # rather than 600 s from now.
    assert all(future.result() is not None for future in futures)
    due = "id = ANY(:ids) AND status = 'queued' AND next_attempt_at <= now()"
    assert count_rows(engine, "job", due, ids=made) == 4
