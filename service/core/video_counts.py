"""Ended videos counted by final status, in Redis: the same totals whichever API replica is scraped.

Every way a video ends (the worker's completed, failed or cancelled; a cancel of a queued video; a lost
job settled by an API or a worker) passes through ``webhook_queue.notify_ended``, which calls
:func:`count_ended_once`. The count is kept exactly once per video by a marker field in the video's own
record, set in the same script as the increment: a second ending of the same video (a worker thought
dead that was not) is not counted again, and the marker goes when the record goes.
"""

from __future__ import annotations

from typing import Any, cast

from redis import Redis
from redis.client import Pipeline

from service.core import redis_keys
from service.core.lifecycle import VideoStatus

ENDED_STATUSES = tuple(status for status in VideoStatus if status.is_terminal)

COUNTED_FIELD = "ended_counted"
"""The marker in a video's record (JSON ``true``) saying its ending has been counted."""

_COUNT_ONCE = """
-- KEYS[1]: the video's record, KEYS[2]: the counts hash. ARGV[1]: the final status, ARGV[2]: the marker.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[2], 'true') == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""


def _ended_status(status: str) -> str:
    final = VideoStatus(status)
    if not final.is_terminal:
        raise ValueError(f"{status!r} is not a final status")
    return final.value


def count_ended(redis_or_pipe: Redis | Pipeline, status: str) -> None:
    """Count one ended video unconditionally (an increment in ``redis_keys.VIDEOS_ENDED_KEY``); for a
    caller that already knows this ending is the video's first. Prefer :func:`count_ended_once`."""
    redis_or_pipe.hincrby(redis_keys.VIDEOS_ENDED_KEY, _ended_status(status), 1)


def count_ended_once(redis: Redis, video_id: str, status: str) -> bool:
    """Count the ending of ``video_id`` with ``status``, unless it was counted before or the record is
    gone. True when it was counted here."""
    counted = redis.eval(
        _COUNT_ONCE,
        2,
        redis_keys.video_key(video_id),
        redis_keys.VIDEOS_ENDED_KEY,
        _ended_status(status),
        COUNTED_FIELD,
    )
    return bool(counted)


def ended_counts(redis: Redis) -> dict[str, int]:
    """Videos ended so far by final status, every final status present (0 when none)."""
    raw = cast(dict[Any, Any], redis.hgetall(redis_keys.VIDEOS_ENDED_KEY))
    counts = {_text(key): int(value) for key, value in raw.items()}
    return {status.value: counts.get(status.value, 0) for status in ENDED_STATUSES}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
