"""The webhook sender: claims due deliveries from Redis and POSTs them from a small pool of threads.

Each attempt runs in its own pool thread within a total deadline, so one slow receiver holds one thread
for at most that long and never delays another receiver's delivery. A delivery is claimed only when a
thread is free to start it, so its lease only has to cover one attempt.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError

from service.api.webhooks.deadline import Deadline, DeadlineExceeded
from service.api.webhooks.signing import secret_key, sign
from service.api.webhooks.store import CLAIM_SCRIPT, SETTLE_SCRIPT
from service.core.errors import InvalidRequest
from service.core.webhook_queue import (
    DUE_KEY,
    ENDED_TTL_S,
    delivery_key,
)
from service.core.webhook_urls import (
    Resolver,
    parse_target,
    redact_url,
    resolve_target,
    scrub,
    system_resolver,
)

log = logging.getLogger("wanserve.webhooks")

BACKOFF_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
"""Wait after the 1st, 2nd, ... failed attempt; after one more failure than this has entries: give up."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: a status code, or an error; ``retry=False`` ends the delivery."""

    status_code: int | None = None
    error: str | None = None
    retry: bool = True

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    """POSTs due deliveries and reschedules failed ones; safe to run in many processes at once.

    Args:
        redis: The shared Redis.
        secret: The signing secret, ``whsec_<base64>`` (anything else raises ValueError at once).
        deadline_s: Longest one attempt may take, all in: DNS, connecting, TLS, sending, and receiving the
            status line and headers.
        backoff_s: Wait after each failed attempt; one failure more than it has entries ends the delivery.
        lease_s: How long a claimed delivery is hidden from other senders; must exceed ``deadline_s``.
        batch: Most deliveries one :meth:`run_once` looks at.
        concurrency: Attempts in flight at once.
        allow_private: Deliver to loopback, private and other internal addresses too
            (WANSERVE_WEBHOOK_ALLOW_PRIVATE); off, they are refused after DNS resolution.
        resolver: Looks up a host's addresses (default: ``getaddrinfo``).
        ssl_context: Verifies receivers' certificates (default: httpx's, with certifi's roots).

    Raises:
        ValueError: A malformed secret (the message names WANSERVE_WEBHOOK_SECRET and how to make one), or
            ``lease_s`` not longer than ``deadline_s``.
    """

    def __init__(
        self,
        redis: Redis,
        secret: str,
        *,
        deadline_s: float = 10.0,
        backoff_s: Sequence[float] = BACKOFF_S,
        lease_s: float = 120.0,
        batch: int = 100,
        concurrency: int = 8,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        secret_key(secret)  # a malformed secret fails at startup, not on every attempt
        if lease_s <= deadline_s:
            raise ValueError(f"lease_s ({lease_s:g}) must exceed deadline_s ({deadline_s:g})")
        # Imported here: only the API process sends; the worker only enqueues and may lack httpcore.
        import httpx

        from service.api.webhooks import transport

        self._transport = transport
        self.redis = redis
        self.secret = secret
        self.deadline_s = deadline_s
        self.backoff_s = tuple(backoff_s)
        self.lease_s = lease_s
        self.batch = batch
        self.allow_private = allow_private
        self.resolver = resolver
        self.ssl_context = ssl_context or httpx.create_ssl_context()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
        self._slots = threading.BoundedSemaphore(concurrency)
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._settle = redis.register_script(SETTLE_SCRIPT)

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due at ``now`` (default: ``time.time()``) and wait for all of them.

        ``now`` drives scheduling only; the ``webhook-timestamp`` header is always the real clock.

        Returns:
            How many deliveries were attempted (successfully or not).
        """
        now = time.time() if now is None else now
        started: list[Future[None]] = []
        for event_id in self._due(now):
            self._slots.acquire()
            future = self._start(event_id, now)
            if future is not None:
                started.append(future)
        wait(started)
        return len(started)

    def run_forever(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Start due deliveries on free threads every ``poll_s`` until ``stop`` is set; for a daemon thread.

        Attempts in flight do not hold up the next poll. Redis outages are logged and waited out. On the
        way out, attempts in flight are let finish (each within its deadline) and the pool is closed.
        """
        try:
            while not stop.is_set():
                try:
                    now = time.time()
                    for event_id in self._due(now):
                        if not self._slots.acquire(blocking=False):
                            break
                        self._start(event_id, now)
                except RedisError as exc:
                    log.warning("webhook sender: Redis unavailable (%s); trying again in %.0f s", exc, poll_s)
                except Exception:
                    log.exception("webhook sender: unexpected error; carrying on")
                stop.wait(poll_s)
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _due(self, now: float) -> list[str]:
        due = cast(list[bytes], self.redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=self.batch))
        return [raw_id.decode() for raw_id in due]

    def _start(self, event_id: str, now: float) -> Future[None] | None:
        """Claim ``event_id`` and attempt it on a pool thread; the caller holds a slot, released here."""
        token = secrets.token_hex(8)
        try:
            keys = [DUE_KEY, delivery_key(event_id)]
            claimed = self._claim(keys=keys, args=[event_id, now, now + self.lease_s, token])
        except BaseException:
            self._slots.release()
            raise
        if not claimed:  # another sender has it, or it ended meanwhile
            self._slots.release()
            return None
        url, body, attempts = claimed[0].decode(), claimed[1] or b"", int(claimed[2])
        return self._pool.submit(self._attempt, event_id, token, url, body, attempts, now)

    def _attempt(self, event_id: str, token: str, url: str, body: bytes, attempts: int, now: float) -> None:
        try:
            outcome = self._deliver(event_id, url, body)
            self._record(event_id, token, url, attempts, outcome, now)
        except Exception as exc:  # Redis gone while settling: the lease runs out and the attempt is retried
            log.warning("webhook %s: could not record the attempt (%s)", event_id, exc)
        finally:
            self._slots.release()

    def _deliver(self, event_id: str, url: str, body: bytes) -> Outcome:
        """One attempt; never raises: every failure becomes an :class:`Outcome`."""
        deadline = Deadline(self.deadline_s)
        transport = self._transport
        try:
            # The URL is parsed and checked again: it may have reached Redis by another route.
            target = parse_target(url)
            addresses = deadline.call(
                lambda: resolve_target(target, allow_private=self.allow_private, resolver=self.resolver)
            )
            status_code = transport.post(
                target,
                addresses,
                self._headers(event_id, body),
                body,
                deadline=deadline,
                ssl_context=self.ssl_context,
            )
        except InvalidRequest as exc:
            return Outcome(error=exc.message, retry=False)
        except DeadlineExceeded as exc:
            return Outcome(error=f"DeadlineExceeded: {exc}")
        except transport.DeliveryError as exc:
            return Outcome(error=str(exc))
        except OSError as exc:  # DNS: the name does not resolve (yet)
            return Outcome(error=f"could not resolve the host: {exc}")
        except Exception as exc:
            log.exception("webhook %s to %s: unexpected error; giving up", event_id, redact_url(url))
            return Outcome(error=f"unexpected {type(exc).__name__}: {exc}", retry=False)
        return Outcome(status_code=status_code)

    def _headers(self, event_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        return {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, event_id, timestamp, body),
        }

    def _record(
        self, event_id: str, token: str, url: str, attempts: int, outcome: Outcome, now: float
    ) -> None:
        error = outcome.error
        if error is None and not outcome.delivered:
            error = f"HTTP {outcome.status_code}"
        error = scrub(error, url) if error else ""
        shown = redact_url(url)
        fields: dict[str, Any] = {
            "last_status_code": outcome.status_code if outcome.status_code is not None else "",
            "last_error": error,
        }
        if outcome.delivered:
            fields |= {"status": "delivered", "ended_at": now}
            next_at: float | str = ""
            log.info("webhook %s delivered to %s (attempt %d)", event_id, shown, attempts)
        elif not outcome.retry or attempts > len(self.backoff_s):
            fields |= {"status": "failed", "ended_at": now}
            next_at = ""
            log.error("webhook %s to %s dropped after %d attempts: %s", event_id, shown, attempts, error)
        else:
            wait_s = self.backoff_s[attempts - 1]
            next_at = now + wait_s
            fields["next_attempt_at"] = next_at
            log.warning(
                "webhook %s to %s failed (attempt %d: %s); retrying in %.0f s",
                event_id,
                shown,
                attempts,
                error,
                wait_s,
            )
        flat = [item for pair in fields.items() for item in pair]
        keys = [DUE_KEY, delivery_key(event_id)]
        self._settle(keys=keys, args=[event_id, token, next_at, ENDED_TTL_S, *flat])
