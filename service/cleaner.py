"""Housekeeping that no request triggers: expiry of ended videos, and ending videos whose job RQ gave up.

Both are safe to run from many processes at once (every API process and every worker does).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

from redis.exceptions import RedisError
from rq.registry import FailedJobRegistry, StartedJobRegistry

from service import jobs
from service.errors import VideoNotFound
from service.jobs import VideoStatus
from service.notifications import notify_ended
from service.storage import LocalStorage
from service.video_store import VideoStore

log = logging.getLogger("wanserve")


def clean_expired(store: VideoStore, storage: LocalStorage, ttl_s: float, now: float | None = None) -> int:
    """Remove expired videos; returns how many."""
    removed = 0
    for video_id in store.expired_ids(ttl_s, now):
        try:
            store.delete(video_id)
        except VideoNotFound:  # another process removed it first
            continue
        storage.delete(video_id)
        removed += 1
    if removed:
        log.info("removed %d expired videos", removed)
    return removed


def settle_lost_jobs(store: VideoStore, result_ttl_s: int | None = None) -> int:
    """End, in the record itself, every video whose job RQ has given up while its record still says
    queued or running: a worker killed with no retries left, or a group failure retried to the end.

    Such a video then has its ``completed_at``, its webhook and its expiry like any other that ended.
    Returns how many were ended here.
    """
    # Abandoned jobs (heartbeat expired) move to the failed registry, or back to the queue if they
    # have retries left; RQ only looks during worker maintenance, so look here too.
    options = {"connection": store.redis, "serializer": jobs.SERIALIZER}
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
            notify_ended(store.redis, store.get(video_id), result_ttl_s)
            ended += 1
    return ended


def run_cleaner(
    store: VideoStore, storage: LocalStorage, ttl_s: int, interval_s: float, stop: threading.Event
) -> None:
    while not stop.wait(interval_s):
        try:
            settle_lost_jobs(store, ttl_s)
            clean_expired(store, storage, ttl_s)
        except RedisError as exc:
            log.warning("housekeeping: Redis unavailable (%s); trying again in %.0f s", exc, interval_s)
