"""Claiming and settling queued deliveries (the queue's layout: :mod:`service.core.webhook_queue`)."""

from __future__ import annotations

from typing import Any, cast

from redis import Redis

from service.core.webhook_queue import delivery_key
from service.core.webhook_urls import redact_url


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
