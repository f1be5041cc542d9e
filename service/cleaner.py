"""Expiry: videos that ended more than ``result_ttl_s`` ago lose their record and their files."""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

from service.storage import LocalStorage
from service.video_store import VideoStore

log = logging.getLogger("wanserve.api")


def clean_expired(store: VideoStore, storage: LocalStorage, ttl_s: float, now: float | None = None) -> int:
    """Remove expired videos; returns how many. Safe to run from many processes at once."""
    removed = 0
    for video_id in store.expired_ids(ttl_s, now):
        store.delete(video_id)
        storage.delete(video_id)
        removed += 1
    if removed:
        log.info("removed %d expired videos", removed)
    return removed


def run_cleaner(
    store: VideoStore, storage: LocalStorage, ttl_s: float, interval_s: float, stop: threading.Event
) -> None:
    while not stop.wait(interval_s):
        try:
            clean_expired(store, storage, ttl_s)
        except RedisError as exc:
            log.warning("expiry cleaner: Redis unavailable (%s); trying again in %.0f s", exc, interval_s)
