"""Tell a video's webhook that it ended. Called by whoever ends it (worker or API); never raises."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError

from service.errors import InvalidRequest
from service.jobs import VideoStatus
from service.video_store import Record
from service.views import video_object
from service.webhooks import EVENT_FOR_STATUS, enqueue_event

log = logging.getLogger("wanserve")


def notify_ended(redis: Redis, record: Record, result_ttl_s: int | None = None) -> None:
    """Queue the video.completed / video.failed / video.cancelled event, if the video has a webhook.

    Only queued here (O(1) Redis writes); an API process delivers it, so a slow receiver never holds
    up a worker, and a webhook problem never fails a video.
    """
    url = record.get("webhook_url")
    status = VideoStatus(record["status"])
    if not url or status not in EVENT_FOR_STATUS:
        return
    try:
        data = video_object(record, status, record.get("error"), None, result_ttl_s)
        enqueue_event(redis, url, EVENT_FOR_STATUS[status], data)
    except (RedisError, InvalidRequest) as exc:
        log.warning("could not queue the webhook for %s: %s", record["id"], exc)
