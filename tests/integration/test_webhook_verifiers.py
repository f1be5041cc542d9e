"""Real deliveries, through the real sender to a receiver on 127.0.0.1, verified by third-party libraries."""

from __future__ import annotations

import base64
import json
import os

import openai
import pytest
from redis import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from service.api.webhooks import WebhookSender, enqueue_event, verify
from tests.webhook_receivers import VIDEO, Receiver

SECRETS = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # the Standard Webhooks example: 24 bytes, no padding
    "whsec_" + base64.b64encode(os.urandom(32)).decode(),  # what the recipe makes: one = of padding
    "whsec_" + base64.b64encode(os.urandom(49)).decode(),  # two = of padding
]


def another_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def deliver(redis: Redis, receiver: Receiver, secret: str) -> tuple[str, dict[str, str], bytes]:
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    sender = WebhookSender(redis, secret, allow_private=True)
    try:
        assert sender.run_once() == 1
    finally:
        sender.close()
    [(headers, body)] = receiver.requests
    return event_id, headers, body


@pytest.mark.parametrize("secret", SECRETS)
def test_a_delivery_verifies_with_the_standardwebhooks_package(redis, receiver, secret: str) -> None:
    event_id, headers, body = deliver(redis, receiver, secret)

    payload = Webhook(secret).verify(body, headers)

    assert (payload["id"], payload["type"], payload["data"]) == (event_id, "video.completed", VIDEO)
    assert verify(secret, headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"completed", b"cancelled"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(another_secret()).verify(body, headers)


@pytest.mark.parametrize("secret", SECRETS)
def test_a_delivery_unwraps_with_the_openai_sdk(redis, receiver, secret: str) -> None:
    event_id, headers, body = deliver(redis, receiver, secret)
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:1/v1")  # never called: unwrap is local

    event = client.webhooks.unwrap(body, headers, secret=secret)

    assert (event.id, event.type) == (event_id, "video.completed")
    assert event.data.id == VIDEO["id"]  # type: ignore[union-attr]
    assert json.loads(body)["data"] == VIDEO
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"completed", b"cancelled"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, headers, secret=another_secret())
