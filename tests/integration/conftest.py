"""The integration tier: real Redis, the app in-process (TestClient), RQ workers in-process (burst), real
receivers on 127.0.0.1, the engine on the tiny model and ffmpeg."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis

from service.api.app import create_app
from service.api.webhooks import WebhookSender
from service.core.settings import Settings
from tests.live_server import served
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


@pytest.fixture
def live_api(settings: Settings) -> Iterator[Callable[..., str]]:
    """Base URLs of apps built from ``settings`` with overrides, each served by a real uvicorn."""
    stack: list[Any] = []

    def start(**overrides: Any) -> str:
        server = served(create_app(settings.model_copy(update=overrides)))
        stack.append(server)
        return server.__enter__()

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)
