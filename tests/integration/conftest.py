"""The integration tier: real Redis, the app in-process (TestClient), RQ workers in-process (burst), real
receivers on 127.0.0.1, the engine on the tiny model and ffmpeg."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis

from service.api.webhooks import WebhookSender
from tests.s3_server import s3_bucket, s3_server  # noqa: F401 (fixtures for the tests here)
from tests.webhook_receivers import SECRET, Trickler, serve_trickling


@pytest.fixture
def make_sender(redis: Redis) -> Iterator[Callable[..., WebhookSender]]:
    """Senders for the local receivers: internal targets allowed, a 2 s deadline; closed after the test."""
    made: list[WebhookSender] = []

    def make(**options: Any) -> WebhookSender:
        sender = WebhookSender(redis, SECRET, **{"deadline_s": 2.0, "allow_private": True, **options})
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    state, stop = serve_trickling()
    yield state
    stop()
