"""Which job messages the consumer may hand straight to the call loop: the plain ones. The rest
take Celery's own path, which deals with them as it always has."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import job_message
from worker.job_strategy import job_of


def _message(**header_overrides: Any) -> tuple[dict[str, Any], list[Any]]:
    job = job_message()
    headers: dict[str, Any] = {"id": "task-1", "task": "gmiq.run_job", "eta": None}
    headers.update(header_overrides)
    return headers, [[job.model_dump(mode="json")], {}, {}]


def test_a_plain_job_message_is_handed_over_as_its_job() -> None:
    headers, body = _message()
    job = job_of(headers, body)
    assert job is not None
    assert str(job.job_id) == body[0][0]["job_id"]
    assert job.request == {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"eta": "2026-12-02T12:00:00+00:00"}, "an ETA: Celery's timer holds it"),
        ({"expires": "2026-12-02T12:00:00+00:00"}, "an expiry: Celery checks it"),
        ({"id": None}, "no task id: its acknowledgement cannot be held"),
    ],
)
def test_messages_with_celery_options_take_celerys_path(headers: dict[str, Any], why: str) -> None:
    headers, body = _message(**headers)
    assert job_of(headers, body) is None, why


def test_a_message_with_linked_tasks_takes_celerys_path() -> None:
    headers, body = _message()
    job = body[0][0]
    unlinked = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert job_of(headers, [[job], {}, unlinked]) is not None  # as gmiq's producers send it
    callback = {"task": "notify", "args": [], "kwargs": {}, "options": {}}
    assert job_of(headers, [[job], {}, {**unlinked, "callbacks": [callback]}]) is None
    assert job_of(headers, [[job], {}, {**unlinked, "chain": [callback]}]) is None


def test_bodies_this_path_cannot_read_take_celerys_path() -> None:
    headers, body = _message()
    job = body[0][0]
    assert job_of(headers, [[job], {"extra": 1}, {}]) is None  # keyword arguments
    assert job_of(headers, [[job, job], {}, {}]) is None  # two arguments
    assert job_of(headers, [[{**job, "kind": "image"}], {}, {}]) is None  # not a job
    assert job_of(headers, {"args": [job]}) is None  # not protocol 2
    assert job_of(headers, None) is None  # not decodable
