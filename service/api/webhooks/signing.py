"""Standard Webhooks signatures: the ``whsec_`` secret, the ``webhook-signature`` header and its check.

Only ``whsec_<base64>`` secrets are accepted. Standard Webhooks libraries (the ``standardwebhooks``
package, Svix) always base64-decode the secret, while the OpenAI SDK uses a secret without the prefix as
raw text: with anything else, one kind of receiver or the other rejects every delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
"""The shortest key the Standard Webhooks specification allows."""

MAKE_SECRET = "python -c \"import base64,os;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: its base64 part, decoded.

    Raises:
        ValueError: The secret is not ``whsec_`` + standard padded base64 of at least 24 bytes; the message
            says how to make one (and never repeats the secret).
    """
    problem = None
    if not secret.startswith(SECRET_PREFIX):
        problem = f"must start with {SECRET_PREFIX}"
    else:
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            key = b""
        # Canonical only (padded, no stray "="): the verifiers' lenient decoders then all read the same key.
        if base64.b64encode(key).decode() != encoded:
            problem = f"must be {SECRET_PREFIX} followed by standard base64 with its = padding"
        elif len(key) < MIN_SECRET_BYTES:
            problem = f"must hold at least {MIN_SECRET_BYTES} bytes of key (it holds {len(key)})"
    if problem is not None:
        raise ValueError(
            f"The webhook secret (WANSERVE_WEBHOOK_SECRET) {problem}, so that every Standard Webhooks "
            f"library and the OpenAI SDK can verify the deliveries. Make one with: {MAKE_SECRET}"
        )
    return key


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request.

    Args:
        secret: ``whsec_<base64>``; the decoded base64 part is the HMAC key.
        event_id: The ``webhook-id`` header.
        timestamp: The ``webhook-timestamp`` header, unix seconds.
        body: The exact request body.

    Returns:
        ``v1,<base64 HMAC-SHA256 of "{event_id}.{timestamp}.{body}">``.

    Raises:
        ValueError: A malformed secret (see :func:`secret_key`).
    """
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether a received webhook is authentic and fresh: what a receiver should check before trusting it.

    Args:
        secret: The shared ``whsec_`` secret.
        headers: The request headers (any capitalisation).
        body: The raw request body, before any JSON parsing.
        tolerance_s: Largest accepted difference between ``webhook-timestamp`` and ``now`` (replays).
        now: The receiver's clock, unix seconds (default: ``time.time()``).

    Returns:
        True when one of the ``v1`` signatures in ``webhook-signature`` matches.

    Raises:
        ValueError: A malformed secret: a receiver's configuration error, not a forged request.
    """
    secret_key(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not event_id or not timestamp or not signatures:
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - sent_at) > tolerance_s:
        return False
    expected = sign(secret, event_id, sent_at, body).encode()
    # Several space-separated signatures are allowed, so that secrets can be rotated.
    return any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in signatures.split()
        if candidate.startswith("v1,")
    )
