"""Webhook secrets: only ``whsec_`` base64 keys, which our signer and every verifier decode alike."""

from __future__ import annotations

import base64
import os
import shlex
import time

import pytest
from redis import Redis
from standardwebhooks import Webhook

from service.api.webhooks import WebhookSender, secret_key, sign, verify
from service.api.webhooks.signing import MAKE_SECRET

UNREACHABLE = "redis://127.0.0.1:1/0"  # never connected to: the constructor refuses before any I/O


@pytest.mark.parametrize(
    "secret",
    [
        "a plain shared secret",
        "",
        "whsec_",
        "WHSEC_" + base64.b64encode(os.urandom(32)).decode(),
        "whsec_" + base64.b64encode(os.urandom(32)).decode().rstrip("="),  # unpadded: OpenAI's SDK fails
        "whsec_" + base64.b64encode(os.urandom(33)).decode() + "=",  # too much padding
        "whsec_" + "QUJD" * 8 + "=" + "QUJD" * 8,  # a stray = inside
        "whsec_" + base64.b64encode(os.urandom(32)).decode()[:-2] + "B=",  # stray bits in the last character
        "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # - and _ are not standard base64
        "whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n",
        "whsec_" + base64.b64encode(os.urandom(16)).decode(),  # shorter than the specification's 24 bytes
    ],
)
def test_a_secret_other_than_whsec_base64_is_refused_with_a_recipe(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        secret_key(secret)
    message = str(refused.value)
    assert "WANSERVE_WEBHOOK_SECRET" in message
    assert MAKE_SECRET in message
    key = secret.removeprefix("whsec_").strip()
    assert len(key) < 8 or key not in message

    with pytest.raises(ValueError, match="WANSERVE_WEBHOOK_SECRET"):
        WebhookSender(Redis.from_url(UNREACHABLE), secret)
    with pytest.raises(ValueError, match="WANSERVE_WEBHOOK_SECRET"):
        sign(secret, "evt_1", 1, b"{}")
    with pytest.raises(ValueError, match="WANSERVE_WEBHOOK_SECRET"):
        verify(secret, {"webhook-id": "evt_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}, b"{}")


def test_the_recipe_makes_a_secret_that_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    program, option, code = shlex.split(MAKE_SECRET)
    assert (program, option) == ("python", "-c")
    exec(code, {})  # what `python -c` runs, in this process
    made = capsys.readouterr().out
    assert len(secret_key(made.strip())) == 32


@pytest.mark.parametrize("size", [24, 25, 26, 32, 48, 64])
def test_every_accepted_secret_is_verified_by_the_standardwebhooks_package(size: int) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(size)).decode()
    body, timestamp = b'{"id":"evt_1","type":"video.completed"}', int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "evt_1", timestamp, body),
    }

    assert secret_key(secret) == Webhook(secret)._whsecret
    assert Webhook(secret).verify(body, headers) == {"id": "evt_1", "type": "video.completed"}
    assert verify(secret, headers, body)


def test_the_lease_must_outlast_the_deadline() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(ValueError, match="lease_s"):
        WebhookSender(Redis.from_url(UNREACHABLE), secret, deadline_s=10, lease_s=10)
