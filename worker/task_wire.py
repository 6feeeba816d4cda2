"""A Celery task message as kombu's Redis transport stores it, built in one step.

Celery's `send_task` builds this document through its router, its producer pool, kombu's
`Producer.publish` and the virtual channel's `prepare_message`, about half the CPU of a
publish whose one round trip is an LPUSH (py-spy on `gmiq api`, docs/performance.md). This
builds the same document: Celery's task protocol 2 (`AMQP.as_task_v2`) in kombu's Redis
envelope (`Channel._put`, body in base64). `tests/integration/test_task_wire.py` compares it
with Celery's own, field by field, so an upgrade that changes either fails there first.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

import orjson

# The task options a plain publish carries in the body's third element.
_EMBED = b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


def publisher_origin() -> str:
    """Who publishes, as Celery names a process that is not a worker: `gen<pid>@<host>`."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_envelope(
    task: str,
    args_json: bytes,
    task_id: str,
    queue: str,
    argsrepr: str,
    origin: str,
    reply_to: str,
    delivery_tag: str,
) -> bytes:
    """The stored message of one task call with positional arguments only. `args_json` is the
    JSON array of the arguments; `argsrepr` is what monitoring shows instead of them."""
    body = b"[" + args_json + b",{}," + _EMBED + b"]"
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": reply_to,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": delivery_tag,
            },
        }
    )
