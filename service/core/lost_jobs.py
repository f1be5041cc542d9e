"""Ending, in the record itself, videos whose job RQ gave up: run by every API process and every worker."""

from __future__ import annotations

import logging
import time
from typing import cast

from rq.registry import FailedJobRegistry, StartedJobRegistry

from service.core import redis_keys
from service.core.errors import VideoNotFound
from service.core.lifecycle import VideoStatus
from service.core.video_store import VideoStore
from service.core.webhook_queue import video_ended

log = logging.getLogger("wanserve")


def settle_lost_jobs(store: VideoStore, result_ttl_s: int | None = None) -> int:
    """End, in the record itself, every video whose job RQ has given up while its record still says
    queued or running: a worker killed with no retries left, or a group failure retried to the end.

    Such a video then has its ``completed_at``, its webhook and its expiry like any other that ended.
    Returns how many were ended here.
    """
    # Abandoned jobs (heartbeat expired) move to the failed registry, or back to the queue if they
    # have retries left; RQ only looks during worker maintenance, so look here too.
    options = {"connection": store.redis, "serializer": redis_keys.SERIALIZER}
    StartedJobRegistry(store.queue.name, **options).cleanup()  # type: ignore[arg-type]
    failed_ids = cast(list[str], FailedJobRegistry(store.queue.name, **options).get_job_ids())  # type: ignore[arg-type]
    ended = 0
    for video_id in failed_ids:
        try:
            record = store.get(video_id)
        except VideoNotFound:
            continue
        if VideoStatus(record["status"]).is_terminal:
            continue
        status, error = store.public_status(record)
        if not status.is_terminal:
            continue
        if store.end_if_unchanged(
            video_id, record["status"], status=status.value, completed_at=time.time(), error=error
        ):
            log.warning("%s ended %s: %s", video_id, status.value, (error or {}).get("code"))
            video_ended(store.redis, store.get(video_id), result_ttl_s)
            ended += 1
    return ended
