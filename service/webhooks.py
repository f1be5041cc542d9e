"""Webhooks: signed ``video.*`` events, queued in Redis by whoever ends a video, POSTed by the API process.

Signing follows Standard Webhooks (https://www.standardwebhooks.com): every request carries
``webhook-id`` (the event id, the same on every retry: receivers deduplicate on it), ``webhook-timestamp``
(unix seconds of this attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}``). A receiver checks a request with :func:`verify`, or any Standard Webhooks
library, given the same secret.

Redis layout (all under ``wanserve:webhooks:``):

- ``due``: sorted set of event ids, scored by the unix time of their next attempt.
- ``delivery:{event_id}``: hash with ``url``, ``body``, ``type``, ``status`` (pending, delivered, failed),
  ``attempts`` and the last outcome. Ended deliveries drop their body and expire after a day, so
  :func:`delivery_status` can still say what happened.

:func:`enqueue_event` only writes to Redis, so the GPU worker never waits on a receiver. Any number of
:class:`WebhookSender` s may share the Redis: each delivery is claimed atomically before its attempt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError

from service.errors import InvalidRequest
from service.jobs import VideoStatus

log = logging.getLogger("wanserve.webhooks")

DUE_KEY = "wanserve:webhooks:due"

BACKOFF_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
"""Wait after the 1st, 2nd, ... failed attempt; after one more failure than this has entries: give up."""

MAX_URL_LENGTH = 2048
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


# -- signing ------------------------------------------------------------------------------------


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request.

    Args:
        secret: ``whsec_<base64>`` (the base64 part is the key) or any other string (its UTF-8 bytes are).
        event_id: The ``webhook-id`` header.
        timestamp: The ``webhook-timestamp`` header, unix seconds.
        body: The exact request body.

    Returns:
        ``v1,<base64 HMAC-SHA256>``.
    """
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether a received webhook is authentic and fresh: what a receiver should check before trusting it.

    Args:
        secret: The shared secret, in either form :func:`sign` accepts.
        headers: The request headers (any capitalisation).
        body: The raw request body, before any JSON parsing.
        tolerance_s: Largest accepted difference between ``webhook-timestamp`` and ``now`` (replays).
        now: The receiver's clock, unix seconds (default: ``time.time()``).

    Returns:
        True when one of the ``v1`` signatures in ``webhook-signature`` matches.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not event_id or not timestamp or not signatures:
        return False
    try:
        sent_at = int(timestamp)
        expected = sign(secret, event_id, sent_at, body).encode()
    except (ValueError, binascii.Error):
        return False
    now = time.time() if now is None else now
    if abs(now - sent_at) > tolerance_s:
        return False
    # Several space-separated signatures are allowed, so that secrets can be rotated.
    return any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in signatures.split()
        if candidate.startswith("v1,")
    )


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    return secret.encode()


# -- validation and enqueueing -------------------------------------------------------------------


def validate_webhook_url(url: str) -> str:
    """Accept only absolute http(s) URLs with a host, at most 2048 characters.

    Returns:
        The URL, unchanged.

    Raises:
        InvalidRequest: ``code="invalid_webhook_url"``, ``param="webhook_url"``.
    """

    def invalid(reason: str) -> InvalidRequest:
        return InvalidRequest(f"webhook_url {reason}.", param="webhook_url", code="invalid_webhook_url")

    if len(url) > MAX_URL_LENGTH:
        raise invalid(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise invalid(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise invalid("must start with http:// or https://")
    if not host:
        raise invalid("must name a host")
    if any(char.isspace() or ord(char) < 0x20 for char in url):
        raise invalid("must not contain whitespace or control characters")
    return url


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def enqueue_event(redis: Redis, url: str, event_type: str, data: dict[str, Any]) -> str:
    """Queue one event for delivery: three O(1) Redis commands in one transaction, no I/O to ``url``.

    Args:
        redis: The shared Redis.
        url: The receiver; checked again here with :func:`validate_webhook_url`.
        event_type: One of :class:`WebhookEvent`'s values, e.g. ``"video.completed"``.
        data: The payload's ``data`` (the public video object), JSON-serialisable.

    Returns:
        The event id (the ``webhook-id`` header and the payload's ``id``).

    Raises:
        InvalidRequest: The URL is not acceptable.
        ValueError: ``event_type`` is not a known event.
        redis.exceptions.RedisError: Redis is unreachable; callers that must not fail should catch it.
    """
    validate_webhook_url(url)
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


def delivery_status(redis: Redis, event_id: str) -> dict[str, Any] | None:
    """What became of an event: ``status`` (pending, delivered, failed), ``attempts`` and the last outcome.

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
        "url": fields.get("url"),
        "status": fields.get("status"),
        "attempts": int(fields.get("attempts", 0)),
        "last_status_code": int(code) if code else None,
        "last_error": fields.get("last_error") or None,
        "next_attempt_at": _float_or_none(fields.get("next_attempt_at")),
        "ended_at": _float_or_none(fields.get("ended_at")),
    }


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value else None


# -- delivery ------------------------------------------------------------------------------------

# Claims an id whose attempt is due: pushes its score to the end of a lease (so a sender that dies
# mid-attempt only delays it) and tags the hash with the claimant's token, which the settle step checks.
_CLAIM = """
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
_SETTLE = """
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


class WebhookSender:
    """POSTs due deliveries and reschedules failed ones; safe to run in many processes at once.

    Args:
        redis: The shared Redis.
        secret: The signing secret (``whsec_<base64>`` or a plain string).
        timeout_s: httpx timeout for connecting, sending and waiting for the response headers.
        backoff_s: Wait after each failed attempt; one failure more than it has entries ends the delivery.
        lease_s: How long a claimed delivery is hidden from other senders; must exceed an attempt.
        batch: Most deliveries one :meth:`run_once` looks at.
    """

    def __init__(
        self,
        redis: Redis,
        secret: str,
        *,
        timeout_s: float = 10.0,
        backoff_s: Sequence[float] = BACKOFF_S,
        lease_s: float = 120.0,
        batch: int = 100,
    ) -> None:
        # Imported here: only the API process sends; the worker only enqueues and may lack httpx.
        import httpx

        _secret_bytes(secret)  # a malformed whsec_ secret fails at startup, not on every attempt
        self.redis = redis
        self.secret = secret
        self.backoff_s = tuple(backoff_s)
        self.lease_s = lease_s
        self.batch = batch
        self.client = httpx.Client(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"user-agent": "wanserve-webhooks"},
        )
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due at ``now`` (default: ``time.time()``), one after another.

        ``now`` drives scheduling only; the ``webhook-timestamp`` header is always the real clock.

        Returns:
            How many deliveries were attempted (successfully or not).
        """
        now = time.time() if now is None else now
        due = cast(list[bytes], self.redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=self.batch))
        attempted = 0
        for raw_id in due:
            event_id = raw_id.decode()
            token = secrets.token_hex(8)
            keys = [DUE_KEY, delivery_key(event_id)]
            claimed = self._claim(keys=keys, args=[event_id, now, now + self.lease_s, token])
            if not claimed:  # another sender has it, or it ended meanwhile
                continue
            url, body, attempts = claimed[0].decode(), claimed[1], int(claimed[2])
            attempted += 1
            try:
                validate_webhook_url(url)  # again: never POST to a URL that reached Redis by another route
            except InvalidRequest as exc:
                self._record(event_id, token, url, attempts, None, exc.message, now, retry=False)
                continue
            status_code, error = self._post(event_id, url, body)
            self._record(event_id, token, url, attempts, status_code, error, now)
        return attempted

    def run_forever(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Call :meth:`run_once` every ``poll_s`` until ``stop`` is set; for a daemon thread.

        Redis outages are logged and waited out. The HTTP client is closed on the way out.
        """
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except RedisError as exc:
                    log.warning("webhook sender: Redis unavailable (%s); trying again in %.0f s", exc, poll_s)
                except Exception:
                    log.exception("webhook sender: unexpected error; carrying on")
                stop.wait(poll_s)
        finally:
            self.close()

    def close(self) -> None:
        self.client.close()

    def _post(self, event_id: str, url: str, body: bytes) -> tuple[int | None, str | None]:
        """One attempt: (status code, None) when the receiver answered, (None, reason) when it did not."""
        import httpx

        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, event_id, timestamp, body),
        }
        try:
            # Streamed and never read: a receiver's response body is neither needed nor trusted in size.
            with self.client.stream("POST", url, content=body, headers=headers) as response:
                return response.status_code, None
        except httpx.HTTPError as exc:
            return None, (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def _record(
        self,
        event_id: str,
        token: str,
        url: str,
        attempts: int,
        status_code: int | None,
        error: str | None,
        now: float,
        *,
        retry: bool = True,
    ) -> None:
        delivered = status_code is not None and 200 <= status_code < 300
        if error is None and not delivered:
            error = f"HTTP {status_code}"
        fields: dict[str, Any] = {
            "last_status_code": status_code if status_code is not None else "",
            "last_error": error or "",
        }
        if delivered:
            fields |= {"status": "delivered", "ended_at": now}
            next_at: float | str = ""
            log.info("webhook %s delivered to %s (attempt %d)", event_id, url, attempts)
        elif not retry or attempts > len(self.backoff_s):
            fields |= {"status": "failed", "ended_at": now}
            next_at = ""
            log.error("webhook %s to %s dropped after %d attempts: %s", event_id, url, attempts, error)
        else:
            next_at = now + self.backoff_s[attempts - 1]
            fields["next_attempt_at"] = next_at
            log.warning(
                "webhook %s to %s failed (attempt %d: %s); retrying in %.0f s",
                event_id,
                url,
                attempts,
                error,
                self.backoff_s[attempts - 1],
            )
        flat = [item for pair in fields.items() for item in pair]
        keys = [DUE_KEY, delivery_key(event_id)]
        self._settle(keys=keys, args=[event_id, token, next_at, ENDED_TTL_S, *flat])
