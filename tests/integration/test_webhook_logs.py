"""Credentials and query tokens in a webhook URL reach the receiver, and nothing else: no log, no status."""

from __future__ import annotations

import base64
import logging
import time

from redis import Redis

from service.api import webhooks
from service.api.webhooks import BACKOFF_S, delivery_status, enqueue_event
from tests.webhook_receivers import VIDEO, closed_port_url

PASSWORD = "hunter2-pa55"
TOKEN = "tok-7f3a9c"


def with_secrets(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://hook-user:{PASSWORD}@{rest}?token={TOKEN}"


def leaked(redis: Redis, event_id: str, caplog) -> list[str]:  # type: ignore[no-untyped-def]
    status = delivery_status(redis, event_id)
    assert status is not None
    texts = [record.getMessage() for record in caplog.records]
    texts += [
        logging.Formatter().formatException(record.exc_info) for record in caplog.records if record.exc_info
    ]
    texts += [str(value) for value in status.values()]
    return [text for text in texts if PASSWORD in text or TOKEN in text]


def test_every_outcome_is_logged_without_credentials_or_query(redis, receiver, make_sender, caplog) -> None:
    receiver.statuses = [500, 200]
    url = with_secrets(receiver.url)
    event_id = enqueue_event(redis, url, "video.completed", VIDEO)
    sender, now = make_sender(), time.time()

    with caplog.at_level(logging.DEBUG):
        assert sender.run_once(now=now) == 1
        assert sender.run_once(now=now + BACKOFF_S[0]) == 1

    assert leaked(redis, event_id, caplog) == []
    shown = f"http://***@127.0.0.1:{receiver.port}/hook?***"
    messages = [record.getMessage() for record in caplog.records if record.name == "wanserve.webhooks"]
    assert len(messages) == 2
    assert all(shown in message for message in messages)
    assert delivery_status(redis, event_id)["url"] == shown  # type: ignore[index]
    # The receiver itself gets them: as Basic credentials and in the request target.
    headers, _ = receiver.requests[-1]
    assert headers["authorization"] == "Basic " + base64.b64encode(f"hook-user:{PASSWORD}".encode()).decode()


def test_failures_are_logged_without_credentials_or_query(redis, make_sender, caplog) -> None:
    refused = enqueue_event(redis, with_secrets(closed_port_url()), "video.completed", VIDEO)
    internal = enqueue_event(redis, with_secrets("http://169.254.169.254/latest"), "video.completed", VIDEO)
    # A URL the form check refuses, put straight into Redis: its error must not quote it either.
    invalid = "evt_" + "2" * 32
    bad_url = with_secrets("http://127.0.0.1:1/x").replace("?", " ?")
    redis.hset(webhooks.delivery_key(invalid), mapping={"url": bad_url, "body": "{}", "status": "pending"})
    redis.zadd(webhooks.DUE_KEY, {invalid: time.time()})

    with caplog.at_level(logging.DEBUG):
        assert make_sender(allow_private=False).run_once() == 3

    for event_id in (refused, internal, invalid):
        assert leaked(redis, event_id, caplog) == []
        assert delivery_status(redis, event_id)["last_error"]  # type: ignore[index]
