"""What a create request must get past before it is enqueued: rate limit, queue length, idempotency."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

from service.core import redis_keys
from service.core.errors import IdempotencyConflict, TooManyRequests


def check_rate(redis: Redis, owner: str, per_minute: int, now: float | None = None) -> None:
    """A fixed one-minute window per owner; 0 turns it off."""
    if per_minute <= 0:
        return
    now = time.time() if now is None else now
    window = int(now // 60)
    key = redis_keys.rate_key(owner, window)
    with redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count = cast(int, pipe.execute()[0])
    if count > per_minute:
        retry_after = max(1, int((window + 1) * 60 - now))
        raise TooManyRequests(
            f"Rate limit of {per_minute} videos per minute reached; retry in {retry_after} s.",
            retry_after_s=retry_after,
        )


def check_queue_length(queued: int, limit: int) -> None:
    """Backpressure: refuse new work while ``limit`` jobs wait (0 turns it off)."""
    if limit > 0 and queued >= limit:
        raise TooManyRequests(
            f"The queue is full ({queued} videos waiting); retry later.", retry_after_s=30, code="queue_full"
        )


@dataclass
class IdempotencyKeys:
    """``Idempotency-Key`` per owner: the same key and body give the same video, another body a 409.

    A claim lives ``pending_ttl_s`` until its video is written; the transaction that writes the video
    extends it to as long as the key should answer (:data:`service.core.video_store.IDEMPOTENCY_TTL_S`), and
    deleting the video removes it, so the key can be used again. Nothing here waits: a request that
    finds the key's video still being written gets a 409 to retry at once.
    """

    redis: Redis
    pending_ttl_s: int = 60

    @staticmethod
    def slot(owner: str, key: str) -> str:
        return redis_keys.idempotency_key(owner, key)

    def claim(self, owner: str, key: str, body: dict[str, Any], video_id: str) -> str | None:
        """Claim ``key`` for ``video_id``; returns the video id an earlier request with it created.

        Raises:
            IdempotencyConflict: the key was used with a different body.
        """
        slot = self.slot(owner, key)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
        claim = json.dumps({"body": fingerprint, "video_id": video_id})
        if self.redis.set(slot, claim, nx=True, ex=self.pending_ttl_s):
            return None
        existing = json.loads(cast(bytes, self.redis.get(slot)) or b"{}")
        if not existing:  # released or expired between the two commands: claim it again
            return self.claim(owner, key, body, video_id)
        if existing.get("body") != fingerprint:
            raise IdempotencyConflict(
                "This Idempotency-Key was used with a different request body.", param="Idempotency-Key"
            )
        return str(existing["video_id"])

    def release(self, owner: str, key: str) -> None:
        """Forget a claim whose request failed before it created anything."""
        self.redis.delete(self.slot(owner, key))
