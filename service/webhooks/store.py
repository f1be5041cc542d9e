"""The delivery queue in Redis: events queued by whoever ends a video, claimed and settled by the senders.

Layout (all under ``wanserve:webhooks:``):

- ``due``: sorted set of event ids, scored by the unix time of their next attempt.
- ``delivery:{event_id}``: hash with ``url``, ``body``, ``type``, ``status`` (pending, delivered, failed),
  ``attempts`` and the last outcome. Ended deliveries drop their body and expire after a day, so
  :func:`delivery_status` can still say what happened.
"""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from typing import Any, cast

from redis import Redis

from service.jobs import VideoStatus
from service.webhooks.urls import parse_target, redact_url

DUE_KEY = "wanserve:webhooks:due"
ENDED_TTL_S = 24 * 3600
PENDING_TTL_S = 7 * 24 * 3600
"""A delivery no sender picks up within this long is forgotten rather than kept forever."""


class WebhookEvent(StrEnum):
    COMPLETED = "video.completed"
    FAILED = "video.failed"
    CANCELLED = "video.cancelled"


EVENT_FOR_STATUS: dict[VideoStatus, WebhookEvent] = {
    VideoStatus.COMPLETED: WebhookEvent.COMPLETED,
    VideoStatus.FAILED: WebhookEvent.FAILED,
    VideoStatus.CANCELLED: WebhookEvent.CANCELLED,
}


def delivery_key(event_id: str) -> str:
    return f"wanserve:webhooks:delivery:{event_id}"


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def enqueue_event(redis: Redis, url: str, event_type: str, data: dict[str, Any]) -> str:
    """Queue one event for delivery: three O(1) Redis commands in one transaction, no I/O to ``url``.

    Only the URL's form is checked here: whether its host is internal is decided when the video names it
    (where the server's settings are known) and again at each delivery, after DNS.

    Args:
        redis: The shared Redis.
        url: The receiver; its form is checked again here with
            :func:`~service.webhooks.urls.parse_target`.
        event_type: One of :class:`WebhookEvent`'s values, e.g. ``"video.completed"``.
        data: The payload's ``data`` (the public video object), JSON-serialisable.

    Returns:
        The event id (the ``webhook-id`` header and the payload's ``id``).

    Raises:
        InvalidRequest: The URL is not acceptable.
        ValueError: ``event_type`` is not a known event.
        redis.exceptions.RedisError: Redis is unreachable; callers that must not fail should catch it.
    """
    parse_target(url)
    event = WebhookEvent(event_type)
    event_id = new_event_id()
    now = time.time()
    payload = {"id": event_id, "type": event.value, "created_at": int(now), "data": data}
    key = delivery_key(event_id)
    with redis.pipeline() as pipe:
        pipe.hset(
            key,
            mapping={
                "url": url,
                "type": event.value,
                "body": json.dumps(payload, separators=(",", ":")),
                "status": "pending",
                "attempts": 0,
                "created_at": now,
            },
        )
        pipe.expire(key, PENDING_TTL_S)
        pipe.zadd(DUE_KEY, {event_id: now})
        pipe.execute()
    return event_id


def delivery_status(redis: Redis, event_id: str) -> dict[str, Any] | None:
    """What became of an event: ``status`` (pending, delivered, failed), ``attempts`` and the last outcome.

    The ``url`` is redacted (no credentials, no query): this view may end up in logs and tickets.

    Returns:
        None for an unknown event, or one that ended more than a day ago.
    """
    raw = cast(dict[bytes, bytes], redis.hgetall(delivery_key(event_id)))
    if not raw:
        return None
    fields = {name.decode(): value.decode() for name, value in raw.items()}
    code = fields.get("last_status_code")
    return {
        "id": event_id,
        "type": fields.get("type"),
        "url": redact_url(fields.get("url", "")),
        "status": fields.get("status"),
        "attempts": int(fields.get("attempts", 0)),
        "last_status_code": int(code) if code else None,
        "last_error": fields.get("last_error") or None,
        "next_attempt_at": _float_or_none(fields.get("next_attempt_at")),
        "ended_at": _float_or_none(fields.get("ended_at")),
    }


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value else None


# Claims an id whose attempt is due: pushes its score to the end of a lease (so a sender that dies
# mid-attempt only delays it) and tags the hash with the claimant's token, which the settle step checks.
CLAIM_SCRIPT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'claim', ARGV[4])
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
return {redis.call('HGET', KEYS[2], 'url'), redis.call('HGET', KEYS[2], 'body'), attempts}
"""

# Records an attempt's outcome, unless another sender has claimed the delivery since (our lease ran out).
# ARGV[3]: the next attempt's time, or '' when the delivery has ended (then ARGV[4] is how long to keep it).
SETTLE_SCRIPT = """
if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], 'body', 'claim', 'next_attempt_at')
  redis.call('EXPIRE', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""
