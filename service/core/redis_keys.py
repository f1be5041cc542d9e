"""Queue, function and Redis key names: where the API and the workers meet in Redis."""

from __future__ import annotations

import hashlib
import re

GENERATE_FUNCTION = "worker.tasks.generate_video"
"""Enqueued by name, so the API never imports the worker (or torch)."""

SERIALIZER = "json"

_VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


def is_valid_video_id(video_id: str) -> bool:
    """Ids are checked before they touch a Redis key or a file path."""
    return bool(_VIDEO_ID.match(video_id))


def video_key(video_id: str) -> str:
    return f"wanserve:video:{video_id}"


def cancel_key(video_id: str) -> str:
    return f"wanserve:cancel:{video_id}"


VIDEO_EVENTS_PREFIX = "wanserve:events:"
"""Pub/sub: a video's record changed (message: its new version, or ``deleted``) on the prefix + its id;
a video's status changed on the prefix + ``QUEUE_MOVED`` (queue positions may have moved)."""
QUEUE_MOVED = "queue"


def video_events_channel(video_id: str) -> str:
    return VIDEO_EVENTS_PREFIX + video_id


VIDEOS_INDEX_KEY = "wanserve:videos"
"""Sorted set of every video id, scored by creation time in microseconds (the expiry cleaner reads it)."""


PUBLIC_OWNER = "public"
"""The owner of every video on an API without keys."""


def owner_index_key(owner: str) -> str:
    """The same, for one API key's videos (what ``GET /v1/videos`` lists)."""
    return f"wanserve:videos:{owner}"


MODEL_REGISTRY_KEY = "wanserve:models"
"""Hash of model name -> profile JSON, written by workers when their model has loaded."""


def idempotency_key(owner: str, key: str) -> str:
    """The claim of one owner's ``Idempotency-Key`` (hashed: clients choose its text and length)."""
    return f"wanserve:idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"


def rate_key(owner: str, window: int) -> str:
    """Creates counted in one owner's one-minute window."""
    return f"wanserve:rate:{owner}:{window}"


WORKERS_INDEX_KEY = "wanserve:workers"
"""Set of registered worker names; an entry whose hash has expired is dropped by the next reader."""


def worker_key(name: str) -> str:
    """A worker's registration (a hash that expires unless its heartbeat refreshes it)."""
    return f"wanserve:worker:{name}"


VIDEOS_ENDED_KEY = "wanserve:stats:videos_ended"
"""Hash of final status -> videos that ended so, counted once when a video's record first ends."""
