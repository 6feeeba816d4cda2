"""A job message goes from Celery's consumer straight to the call loop, not through its pool.

Celery hands every message to a pool thread, which runs the task. The job task only hands
its job to the call loop (`run_job`), so the pool thread is a hop: a thread to wake, a
request object and Celery's task tracer for every job, and under load a thread that queues for
the GIL. At the start of a burst, 200 jobs waited on that hop and on each other before their
calls began (docs/performance.md). Here the consumer's thread offers the job to the call loop
itself (`CallLoop.offer`): taken at once if the loop has room, else kept in the loop, first
come first served, and taken on the loop's own thread as soon as a slot frees, with no thread
to wake. The message is acknowledged when its job is taken, as the task would have done; until
then it is unacknowledged and counts against the worker's prefetch, as a message waiting in
Celery's pool did, so a full worker stops reading. A message this path does not know what to
do with (an ETA, an expiry, a revoked id, keyword arguments, linked callbacks, a body that
does not validate) takes Celery's own path, as does every message once the worker is
stopping, so Celery deals with it exactly as it always has. Offers still waiting when the
consumer stops (to reconnect, or for good) are dropped unacknowledged (`DropOffers`): kombu
puts their messages back as the channel closes.

The acknowledgement is held until the claim has run, as `run_job` holds it
(`broker_batches.hold_ack`): the message may be its job's only copy. A job handed over this way
is not a Celery task execution: no `task_received` or `task_prerun` signal, and it is not in
`celery inspect` counts. gmiq's own view of it is the call loop's, as for every job taken.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import bootsteps
from celery.worker.strategy import default
from pydantic import ValidationError

from api_contracts.messages import JobMessage
from worker import runtime
from worker.broker_batches import hold_ack, release_ack
from worker.call_loop import Offered

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


def job_of(headers: dict[str, Any], body: Any) -> JobMessage | None:
    """The job a task message carries, if this path may hand it over: a protocol 2 message
    with one positional argument that validates, no keyword arguments, no ETA or expiry, and a
    string task id; None for anything else (Celery's path then handles it)."""
    if not isinstance(headers.get("id"), str) or headers.get("eta") or headers.get("expires"):
        return None
    if not isinstance(body, list | tuple) or len(body) != 3:
        return None
    args, kwargs, embed = body
    if kwargs or not isinstance(args, list | tuple) or len(args) != 1:
        return None
    # Callbacks, errbacks, a chain or a chord: Celery's path runs them; this one would not.
    if not isinstance(embed, dict) or any(embed.values()):
        return None
    try:
        return JobMessage.model_validate(args[0])
    except ValidationError:
        return None


class DropOffers(bootsteps.StartStopStep):
    """A consumer step: as the consumer stops (to reconnect, or for good), the offers still
    waiting in the call loop are dropped. Their channel is closing and kombu puts their
    messages back on their queues, so taking them too would run each job twice (a no-op
    claim the second time, but a wasted one); the next channel delivers them again."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def stop(self, parent: Any) -> None:
        _drop_offers()

    def shutdown(self, parent: Any) -> None:
        _drop_offers()


def _drop_offers() -> None:
    installed = runtime.installed()
    if installed is not None and (dropped := installed.calls.drop_offers()):
        log.info("consumer stopping: %d offered jobs left to be delivered again", dropped)


def job_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Handler:
    """Celery's strategy for the job task (its `Strategy`): the consumer calls the handler it
    returns for each message of the task."""
    celery_path = default(task, app, consumer, **kwargs)
    revoked = consumer.controller.state.revoked
    connection_errors = consumer.connection_errors

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        installed = runtime.installed()
        headers = message.headers or {}
        job = None
        if installed is not None and not callbacks and headers.get("id") not in revoked:
            job = job_of(headers, _decoded(message))
        if installed is None or job is None:
            return celery_path(message, body, ack, reject, callbacks, **kw)
        task_id: str = headers["id"]
        offered = Offered(
            job,
            hold=partial(hold_ack, task_id),
            settled=partial(release_ack, task_id),
            # Celery's own acknowledgement: run on the consumer's thread, which it wakes, so a
            # worker whose prefetch was full reads again (an ack from another thread did not).
            accept=partial(ack, log, connection_errors),
        )
        if not installed.calls.offer(offered):  # stopping: Celery's path gives it back
            return celery_path(message, body, ack, reject, callbacks, **kw)
        return None

    return handle


def _decoded(message: Any) -> Any:
    """The message's body, or None if it cannot be read (Celery's path then reports it)."""
    try:
        return message.decode()
    except Exception:
        return None
