"""Webhooks: signed ``video.*`` events, queued in Redis by whoever ends a video, POSTed by the API process.

Signing follows Standard Webhooks (https://www.standardwebhooks.com): every request carries
``webhook-id`` (the event id, the same on every retry: receivers deduplicate on it), ``webhook-timestamp``
(unix seconds of this attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}``). The secret must be ``whsec_`` + base64 of at least 24 random bytes: a
server given any other secret refuses to start, with a message saying how to make one, rather than sign
with a key that half the verifiers would decode differently. Receivers check a request with :func:`verify`,
any Standard Webhooks library (``standardwebhooks.Webhook(secret).verify``) or the OpenAI SDK
(``client.webhooks.verify_signature``), given the same secret.

Receivers must be public: URLs whose host is loopback, private, link-local, carrier-grade NAT, multicast,
a cloud metadata address (in any spelling, IPv4-mapped IPv6 included) or an internal name (``localhost``,
``*.internal``, single-label names) are refused when a video names them and again at each delivery, after
DNS; the connection then goes to the checked address only. ``WANSERVE_WEBHOOK_ALLOW_PRIVATE=1`` lifts
this for receivers on the operator's own network. Logs and :func:`delivery_status` show URLs without their
credentials and query.

Modules: :mod:`.signing` (secret, signature), :mod:`service.core.webhook_addresses` and
:mod:`service.core.webhook_urls` (what a URL may point to), :mod:`service.core.webhook_queue` (the Redis
queue, filled by :func:`enqueue_event`), :mod:`.store` (claims and outcomes), :mod:`.deadline`,
:mod:`.transport` (one POST) and :mod:`.sender`.
:func:`enqueue_event` only writes to Redis, so the GPU worker never waits on a receiver. Any number of
:class:`WebhookSender` s may share the Redis: each delivery is claimed atomically before its attempt.
"""

from service.api.webhooks.sender import BACKOFF_S, WebhookSender
from service.api.webhooks.signing import secret_key, sign, verify
from service.api.webhooks.store import delivery_status
from service.core.webhook_queue import (
    DUE_KEY,
    ENDED_TTL_S,
    EVENT_FOR_STATUS,
    PENDING_TTL_S,
    WebhookEvent,
    delivery_key,
    enqueue_event,
    new_event_id,
)
from service.core.webhook_urls import MAX_URL_LENGTH, redact_url, validate_webhook_url

__all__ = [
    "BACKOFF_S",
    "DUE_KEY",
    "ENDED_TTL_S",
    "EVENT_FOR_STATUS",
    "MAX_URL_LENGTH",
    "PENDING_TTL_S",
    "WebhookEvent",
    "WebhookSender",
    "delivery_key",
    "delivery_status",
    "enqueue_event",
    "new_event_id",
    "redact_url",
    "secret_key",
    "sign",
    "validate_webhook_url",
    "verify",
]
