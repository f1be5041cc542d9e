"""The API's housekeeping loop: expiry of ended videos, and settling videos whose job RQ gave up.

Safe to run from many processes at once (every API process does; workers settle lost jobs too).
"""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

from service.core.errors import VideoNotFound
from service.core.lost_jobs import settle_lost_jobs
from service.core.storage import Storage
from service.core.video_store import VideoStore

log = logging.getLogger("wanserve")


def clean_expired(store: VideoStore, storage: Storage, ttl_s: float, now: float | None = None) -> int:
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


def run_cleaner(
    store: VideoStore, storage: Storage, ttl_s: int, interval_s: float, stop: threading.Event
) -> None:
    while not stop.wait(interval_s):
        try:
            settle_lost_jobs(store, ttl_s)
            clean_expired(store, storage, ttl_s)
        except RedisError as exc:
            log.warning("housekeeping: Redis unavailable (%s); trying again in %.0f s", exc, interval_s)
