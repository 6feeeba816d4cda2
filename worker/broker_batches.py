"""Taking several messages per round trip from kombu's Redis transport.

kombu's Redis channel takes one message per `BRPOP`, then records it as unacknowledged with a
second round trip (`MULTI ZADD HSET EXEC`), all on Celery's one consumer thread. Under load that
thread is what binds a worker process (docs/performance.md). Here, once a `BRPOP` has returned
a message, one Lua script records it and moves up to the free prefetch more messages from the
same queues, in the same order `BRPOP` reads them, into the unacknowledged set, atomically:
two round trips for a batch instead of two per message, and a message is never off its queue
without being in the unacknowledged set (kombu's own `BRPOP`-then-record leaves a gap for the
first one, as before).

The entries are what kombu itself writes (`[message, exchange, routing_key]` in the `unacked`
hash, the delivery tag in its index with the time), so its acknowledgement, its restore on
shutdown and its restore of messages past the visibility timeout all work on them unchanged.
A Redis that cannot run the script (before 6.2, `RPOP` takes no count) gets kombu's own path.

Acknowledgements, one `MULTI ZREM HDEL EXEC` each on the same thread, are gathered and written
in one pipeline at the start of the consumer loop's next turn (or once a batch's worth wait).
The prefetch slot is freed at once, as before. A process that dies with acknowledgements not
yet written leaves those messages to be restored after the visibility timeout, and a job
message redelivered is a no-op (its job is claimed or done): at-least-once, as before. They
are also written before kombu restores anything (a channel closing, the visibility sweep), so
an acknowledged message is never put back.

A task may hold its acknowledgement's write (`hold_ack`): the job task's message is
acknowledged when it is handed to the call loop, before its claim, and written only once the
claim has run (`release_ack`), so a message that is still its job's only copy stays
restorable.

Where kombu would have recorded nothing, the batch leaves nothing: a message its consumer does
not take in (no acknowledgements, or kombu cannot read it) loses its entry, and a consumer
without a prefetch limit reads one message at a time. The change is process-wide (kombu's
classes), so only worker processes make it (`create_celery_app(..., consumer=True)`). It
mirrors kombu 5.7's `_brpop_read`; the tests in `tests/integration/test_broker_batches.py`
are what a kombu upgrade must pass.
"""

from __future__ import annotations

import logging
import re
import threading
from queue import Empty
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

# What losing Redis looks like on a kombu channel (see `celery_app._tolerate_lost_channel`).
LOST_CHANNEL_ERRORS: tuple[type[BaseException], ...] = (
    AttributeError,
    *kombu_redis.Transport.connection_errors,
)

# At most this many per round trip (`take_messages_in_batches` sets it; 1: kombu's own path).
_max_batch = 1

# KEYS: the unacked hash, its index, then the queue lists in BRPOP's order.
# ARGV: the time, how many more to take, the first message's tag and its unacked entry.
# Returns key, message, recorded (1 or 0) for each message taken.
_TAKE_MORE = """
local now = ARGV[1]
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local want = tonumber(ARGV[2])
local out = {}
for i = 3, #KEYS do
  if want <= 0 then break end
  local items = redis.call('RPOP', KEYS[i], want)
  if items then
    for _, item in ipairs(items) do
      local recorded = 0
      local ok, message = pcall(cjson.decode, item)
      if ok and type(message) == 'table' and type(message.properties) == 'table' then
        local properties = message.properties
        local info = properties.delivery_info
        local tag = properties.delivery_tag
        if type(tag) == 'string' and type(info) == 'table'
            and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
          redis.call('ZADD', KEYS[2], now, tag)
          redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info.exchange)
            .. ',' .. cjson.encode(info.routing_key) .. ']')
          recorded = 1
        end
      end
      out[#out + 1] = KEYS[i]
      out[#out + 1] = item
      out[#out + 1] = recorded
      want = want - 1
    end
  end
end
return out
"""


def unacked_entry(payload: dict[str, Any]) -> tuple[str, str] | None:
    """The delivery tag and the entry kombu's `QoS.append` would write; None if the message
    lacks what kombu needs to restore it (kombu's own path then records it)."""
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return None
    tag, info = properties.get("delivery_tag"), properties.get("delivery_info")
    if not isinstance(tag, str) or not isinstance(info, dict):
        return None
    exchange, routing_key = info.get("exchange"), info.get("routing_key")
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        return None
    return tag, dumps([payload, exchange, routing_key])


def _queue_keys(channel: Any) -> list[str]:
    """The lists `BRPOP` reads, in its order (priority steps first), as Redis names them."""
    queues = channel._queue_cycle.consume(len(channel.active_queues))
    return [
        channel.global_keyprefix + channel._q_for_pri(queue, pri)
        for pri in channel.priority_steps
        for queue in queues
    ]


def _take_batch(
    channel: Any, dest: str, payload: dict[str, Any], room: int
) -> list[tuple[str, Any, str | None]] | None:
    """Record the message `BRPOP` returned and take up to `room` more: the queue, payload and
    recorded tag of each (None: not recorded here), the first one first. None if the script
    was not run: kombu's own path then takes the first message."""
    entry = unacked_entry(payload)
    if entry is None or room <= 0 or getattr(channel, "_gmiq_no_batches", False):
        return None
    tag, unacked = entry
    prefix = channel.global_keyprefix
    keys = [prefix + channel.unacked_key, prefix + channel.unacked_index_key]
    keys += _queue_keys(channel)
    try:
        with channel.conn_or_acquire() as client:
            reply = client.execute_command(
                "EVAL", _TAKE_MORE, len(keys), *keys, time(), room, tag, unacked
            )
    except ResponseError as exc:
        if _cannot_run(exc):  # kombu's own path from now on
            log.warning("taking messages in batches is off: %s", exc)
            channel._gmiq_no_batches = True
        else:  # OOM, a failover, a busy script: this message alone takes kombu's path
            log.warning("taking one message alone: %s", exc)
        return None
    batch: list[tuple[str, Any, str | None]] = [(dest, payload, tag)]
    for n in range(0, len(reply), 3):
        key, item, stored = reply[n : n + 3]
        try:
            more = loads(bytes_to_str(item))
        except ValueError:  # cjson read it, kombu cannot: dropped, as kombu would drop it
            log.warning("dropped a message kombu cannot decode from %s", bytes_to_str(key))
            _forget(channel.qos, [_tag_of(item)] if stored else [])
            continue
        # The script records only a message whose `delivery_tag` is a string.
        recorded = more["properties"]["delivery_tag"] if stored else None
        queue = bytes_to_str(key)[len(prefix) :].rsplit(channel.sep, 1)[0]
        batch.append((queue, more, recorded))
    return batch


def _cannot_run(exc: ResponseError) -> bool:
    """The script can never run on this Redis (too old for `RPOP`'s count, or scripts are not
    allowed), as opposed to a passing failure."""
    text = str(exc).lower()
    return any(sign in text for sign in ("wrong number of arguments", "unknown command", "noperm"))


def _tag_of(item: bytes) -> str:
    """The delivery tag the script recorded for an item (as cjson read it)."""
    found = re.search(rb'"delivery_tag"\s*:\s*"([^"]*)"', item)
    return found.group(1).decode() if found else ""


def _brpop_read(self: Any, **options: Any) -> bool:
    """kombu 5.7's `Channel._brpop_read`, delivering the batch `_take_batch` adds."""
    try:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
        except self.connection_errors:
            # As kombu: disconnect, so the next iteration reconnects.
            self.client.connection.disconnect()
            raise
        if not dest__item:
            raise Empty()
        dest, item = dest__item
        dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        payload = loads(bytes_to_str(item))
    finally:
        self._in_poll = None
        self._flush_brpop_reauth()
    qos = self.qos
    estimate = qos.can_consume_max_estimate() if qos.prefetch_count else None
    # Without a prefetch limit (no acknowledgements to count) or while closing: kombu's path.
    room = 0 if estimate is None or self._closing else min(_max_batch, estimate) - 1
    batch = _take_batch(self, dest, payload, room)
    if batch is None:
        self.connection._deliver(payload, dest)
        return True
    failed: BaseException | None = None
    for queue, message, recorded in batch:
        # Delivery calls `QoS.append` for this message before it returns.
        qos.__dict__["_gmiq_recorded"] = recorded
        try:
            self.connection._deliver(message, queue)
        except Exception as exc:  # the rest are delivered all the same, then it is raised
            failed = failed or exc
        finally:
            qos.__dict__["_gmiq_recorded"] = None
        if recorded is not None and recorded not in qos._delivered:
            # Not taken in (kombu could not read it, or its consumer does not acknowledge):
            # kombu would not have recorded it, so neither does the batch.
            _forget(qos, [recorded])
    if failed is not None:
        raise failed
    return True


def _forget(qos: Any, tags: list[str]) -> None:
    tags = [tag for tag in tags if tag]
    if tags:
        with qos.pipe_or_acquire() as pipe:
            pipe.zrem(qos.unacked_index_key, *tags).hdel(qos.unacked_key, *tags).execute()


def _append(self: Any, message: Any, delivery_tag: str) -> None:
    """kombu's `QoS.append`, but a message the script recorded is only counted, not written
    again."""
    if delivery_tag is not None and self.__dict__.get("_gmiq_recorded") == delivery_tag:
        kombu_virtual.QoS.append(self, message, delivery_tag)
        return
    _kombu_append(self, message, delivery_tag)


_kombu_append = kombu_redis.QoS.append
_kombu_restore_unacked_once = kombu_redis.QoS.restore_unacked_once
_kombu_restore_visible = kombu_redis.QoS.restore_visible
_kombu_on_poll_start = kombu_redis.MultiChannelPoller.on_poll_start
_acks_lock = threading.Lock()
# Tasks whose acknowledgement is not written yet even once given (see `hold_ack`): task id to
# the channel's QoS and the delivery tag, once acknowledged.
_held: dict[str, tuple[Any, str] | None] = {}


def hold_ack(task_id: str) -> None:
    """Keep the task's message in the unacknowledged set, even once acknowledged, until
    `release_ack`. A job message is acknowledged when its task hands it to the call loop,
    before its claim; a Redis-only producer's job has no row until that claim, so its message
    must stay restorable until then. A held message whose process dies or stops first is
    restored after the visibility timeout (by any worker's sweep), and a redelivered job
    message is a no-op once its job is claimed: at-least-once, as before."""
    with _acks_lock:
        _held.setdefault(task_id, None)


def release_ack(task_id: str) -> None:
    """The held acknowledgement may be written now (at the consumer's next turn)."""
    with _acks_lock:
        given = _held.pop(task_id, None)
        if given is not None:
            qos, delivery_tag = given
            qos.__dict__.setdefault("_gmiq_acks", []).append(delivery_tag)


def _task_id(qos: Any, delivery_tag: str) -> str | None:
    message = qos._delivered.get(delivery_tag)
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id")
    return task_id if isinstance(task_id, str) else None


def _ack(self: Any, delivery_tag: str) -> None:
    """kombu's `QoS.ack`, with the Redis write left for `_write_acks` (or, for a held task,
    for `release_ack`); the prefetch slot is freed now."""
    task_id = _task_id(self, delivery_tag)
    with _acks_lock:
        if task_id is not None and task_id in _held:
            _held[task_id] = (self, delivery_tag)
            full = False
        else:
            pending: list[str] = self.__dict__.setdefault("_gmiq_acks", [])
            pending.append(delivery_tag)
            full = len(pending) >= _max_batch
    kombu_virtual.QoS.ack(self, delivery_tag)
    if full:
        _write_acks(self)


def _write_acks(qos: Any) -> None:
    """Remove the acknowledged messages from the unacked hash and index, in one round trip."""
    with _acks_lock:
        tags: list[str] = qos.__dict__.get("_gmiq_acks") or []
        qos.__dict__["_gmiq_acks"] = []
    if not tags:
        return
    try:
        _forget(qos, tags)
    except LOST_CHANNEL_ERRORS as exc:  # restored after the visibility timeout: a no-op
        log.warning("could not acknowledge %d messages after losing Redis: %r", len(tags), exc)


def _on_poll_start(self: Any) -> None:
    """kombu's `MultiChannelPoller.on_poll_start` (each turn of the consumer loop, and each
    synchronous read), after writing the acknowledgements gathered since the last turn."""
    for channel in list(self._channels):
        if channel._qos is not None:  # a channel that never consumed has nothing to write
            _write_acks(channel._qos)
    _kombu_on_poll_start(self)


def _restore_unacked_once(self: Any, stderr: Any = None) -> Any:
    """kombu's restore as a channel closes, once its acknowledgements are written (else their
    messages would be restored too)."""
    _write_acks(self)
    return _kombu_restore_unacked_once(self, stderr)


def _restore_visible(self: Any, *args: Any, **kwargs: Any) -> Any:
    """kombu's sweep of messages past the visibility timeout, once the acknowledgements are
    written (else one acknowledged this turn could be put back)."""
    _write_acks(self)
    return _kombu_restore_visible(self, *args, **kwargs)


def take_messages_in_batches(max_batch: int) -> None:
    """Have kombu's Redis channels take up to `max_batch` messages per read and write up to as
    many acknowledgements per round trip (1: one at a time, as kombu does). Process-wide, like
    the channel it changes; calling it again changes the size."""
    global _max_batch
    _max_batch = max_batch
    setattr(kombu_redis.Channel, "_brpop_read", _brpop_read)  # noqa: B010 - kombu's private
    setattr(kombu_redis.QoS, "append", _append)  # noqa: B010
    setattr(kombu_redis.QoS, "ack", _ack)  # noqa: B010
    setattr(kombu_redis.QoS, "restore_unacked_once", _restore_unacked_once)  # noqa: B010
    setattr(kombu_redis.QoS, "restore_visible", _restore_visible)  # noqa: B010
    setattr(kombu_redis.MultiChannelPoller, "on_poll_start", _on_poll_start)  # noqa: B010
