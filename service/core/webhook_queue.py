"""The webhook delivery queue in Redis, and the one call that fills it: whoever ends a video queues its event.

The API's senders (:mod:`service.api.webhooks`) claim, deliver and settle what is queued here.

Layout (all under ``wanserve:webhooks:``):

- ``due``: sorted set of event ids, scored by the unix time of their next attempt.
- ``delivery:{event_id}``: hash with ``url``, ``body``, ``type``, ``status`` (pending, delivered, failed),
  ``attempts`` and the last outcome. Ended deliveries drop their body and expire after a day, so the
  API can still say what happened.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from service.core.errors import InvalidRequest
from service.core.lifecycle import VideoStatus
from service.core.video_counts import count_ended_once
from service.core.video_object import video_object
from service.core.video_store import Record
from service.core.webhook_urls import parse_target

log = logging.getLogger("wanserve")

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
            :func:`~service.core.webhook_urls.parse_target`.
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


def video_ended(redis: Redis, record: Record, result_ttl_s: int | None = None) -> None:
    """What follows a video's end, whoever ended it (worker or API): count it once among the ended videos
    (``wanserve_videos_total``), and queue its video.completed / video.failed / video.cancelled event if
    it has a webhook. Never raises.

    Only queued here (O(1) Redis writes); an API process delivers it, so a slow receiver never holds
    up a worker, and a webhook problem never fails a video.
    """
    status = VideoStatus(record["status"])
    try:
        count_ended_once(redis, record["id"], status.value)
    except RedisError as exc:
        log.warning("could not count %s as ended: %s", record["id"], exc)
    url = record.get("webhook_url")
    if not url or status not in EVENT_FOR_STATUS:
        return
    try:
        data = video_object(record, status, record.get("error"), None, result_ttl_s)
        enqueue_event(redis, url, EVENT_FOR_STATUS[status], data)
    except (RedisError, InvalidRequest) as exc:
        log.warning("could not queue the webhook for %s: %s", record["id"], exc)
