"""Webhook delivery over real Redis to a real HTTP receiver on 127.0.0.1; time is driven through ``now``."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import pytest

from service.api import webhooks
from service.api.webhooks import (
    BACKOFF_S,
    WebhookSender,
    delivery_status,
    enqueue_event,
    sign,
    verify,
)
from service.api.webhooks.sender import Outcome
from service.core.errors import InvalidRequest
from tests.webhook_receivers import SECRET, VIDEO, closed_port_url

OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="


# -- signing ------------------------------------------------------------------------------------


def headers_for(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body),
    }


@pytest.mark.parametrize("secret", [SECRET, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_a_signature_verifies_and_nothing_else_does(secret: str) -> None:
    body, now = b'{"id":"evt_1"}', int(time.time())
    headers = headers_for(secret, "evt_1", now, body)

    assert headers["webhook-signature"].startswith("v1,")
    assert verify(secret, headers, body)
    assert verify(secret, {name.upper(): value for name, value in headers.items()}, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(OTHER_SECRET, headers, body)
    assert not verify(secret, {**headers, "webhook-id": "evt_2"}, body)
    old = headers_for(secret, "evt_1", now - 301, body)
    assert not verify(secret, old, body)
    assert verify(secret, old, body, tolerance_s=600)
    assert not verify(secret, {**headers, "webhook-timestamp": "soon"}, body)
    assert not verify(secret, {"webhook-id": "evt_1"}, body)
    rotated = {**headers, "webhook-signature": "v1,bm90IGl0 " + headers["webhook-signature"]}
    assert verify(secret, rotated, body)


def test_a_whsec_secret_is_keyed_by_its_decoded_bytes() -> None:
    # The published Standard Webhooks example, byte for byte.
    example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(example, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected

    assert sign(SECRET, "evt_1", 1, b"{}") != sign(SECRET, "evt_1", 1, b"{ }")


# -- delivery ------------------------------------------------------------------------------------


def test_a_completed_event_is_delivered_once_and_signed(redis, receiver, make_sender) -> None:
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    sender = make_sender()

    assert sender.run_once() == 1
    assert sender.run_once() == 0

    [(headers, body)] = receiver.requests
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == event_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert verify(SECRET, headers, body)
    payload = json.loads(body)
    assert payload == {
        "id": event_id,
        "type": "video.completed",
        "created_at": payload["created_at"],
        "data": VIDEO,
    }
    assert isinstance(payload["created_at"], int)
    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["attempts"], status["last_status_code"]) == ("delivered", 1, 200)
    assert redis.zcard(webhooks.DUE_KEY) == 0
    assert redis.hget(webhooks.delivery_key(event_id), "body") is None
    assert 0 < redis.ttl(webhooks.delivery_key(event_id)) <= webhooks.ENDED_TTL_S


def test_a_server_error_is_retried_after_the_backoff(redis, receiver, make_sender) -> None:
    receiver.statuses = [500, 200]
    event_id = enqueue_event(redis, receiver.url, "video.failed", VIDEO)
    sender, start = make_sender(), time.time()

    assert sender.run_once(now=start) == 1
    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["last_status_code"], status["last_error"]) == (
        "pending",
        500,
        "HTTP 500",
    )
    assert status["next_attempt_at"] == pytest.approx(start + BACKOFF_S[0])

    assert sender.run_once(now=start + BACKOFF_S[0] - 1) == 0
    assert sender.run_once(now=start + BACKOFF_S[0]) == 1
    assert receiver.ids() == [event_id, event_id]
    assert all(verify(SECRET, headers, body) for headers, body in receiver.requests)
    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["attempts"], status["last_status_code"]) == ("delivered", 2, 200)


def test_a_delivery_is_dropped_after_the_last_backoff(redis, receiver, make_sender, caplog) -> None:
    receiver.statuses = [503]
    event_id = enqueue_event(redis, receiver.url, "video.cancelled", VIDEO)
    sender, now = make_sender(), time.time()

    for wait in BACKOFF_S:
        assert sender.run_once(now=now) == 1
        now += wait
    with caplog.at_level(logging.ERROR, logger="wanserve.webhooks"):
        assert sender.run_once(now=now) == 1

    assert len(receiver.requests) == len(BACKOFF_S) + 1
    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["attempts"]) == ("failed", len(BACKOFF_S) + 1)
    assert redis.zcard(webhooks.DUE_KEY) == 0
    assert sender.run_once(now=now + 10 * max(BACKOFF_S)) == 0
    assert any(event_id in record.getMessage() for record in caplog.records)


def test_a_refused_connection_is_retried_without_stopping_the_sender(redis, receiver, make_sender) -> None:
    dead = enqueue_event(redis, closed_port_url(), "video.completed", VIDEO)
    alive = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    sender, now = make_sender(), time.time()

    assert sender.run_once(now=now) == 2

    status = delivery_status(redis, dead)
    assert status is not None
    assert (status["status"], status["attempts"], status["last_status_code"]) == ("pending", 1, None)
    assert "ConnectError" in status["last_error"]
    assert status["next_attempt_at"] == pytest.approx(now + BACKOFF_S[0])
    assert [headers["webhook-id"] for headers, _ in receiver.requests] == [alive]
    assert sender.run_once(now=now + BACKOFF_S[0]) == 1
    assert delivery_status(redis, dead)["attempts"] == 2  # type: ignore[index]


def test_a_redirect_is_not_followed(redis, receiver, make_sender) -> None:
    receiver.statuses = [302]
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)

    assert make_sender().run_once() == 1

    assert len(receiver.requests) == 1
    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["last_status_code"]) == ("pending", 302)


def test_concurrent_senders_deliver_each_event_exactly_once(redis, receiver, make_sender) -> None:
    event_ids = {enqueue_event(redis, receiver.url, "video.completed", VIDEO) for _ in range(20)}
    senders = [make_sender() for _ in range(3)]
    start = threading.Barrier(len(senders))
    attempted: list[int] = []

    def run(sender: WebhookSender) -> None:
        start.wait()
        attempted.append(sender.run_once())

    threads = [threading.Thread(target=run, args=(sender,)) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    delivered = [headers["webhook-id"] for headers, _ in receiver.requests]
    assert sorted(delivered) == sorted(event_ids)
    assert sum(attempted) == len(event_ids)


def test_a_sender_whose_lease_ran_out_cannot_overwrite_the_outcome(redis, receiver, make_sender) -> None:
    receiver.statuses = [500, 200]
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    sender, now = make_sender(lease_s=1.0, deadline_s=0.5), time.time()
    # A sender claims the delivery and stalls past its lease ...
    stalled = sender._claim(
        keys=[webhooks.DUE_KEY, webhooks.delivery_key(event_id)], args=[event_id, now, now + 1, "stalled"]
    )
    assert stalled is not None
    assert sender.run_once(now=now + 0.5) == 0
    # ... another takes it over (answered 500; the stalled claim counted as the first attempt) ...
    assert sender.run_once(now=now + 1) == 1
    assert sender.run_once(now=now + 1 + BACKOFF_S[1]) == 1
    # ... then the stalled one reports back: the delivered outcome stands.
    sender._record(event_id, "stalled", receiver.url, 1, Outcome(status_code=500), now + 60)

    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["attempts"]) == ("delivered", 3)
    assert redis.zcard(webhooks.DUE_KEY) == 0


def test_enqueueing_does_no_network_io(redis, make_sender, monkeypatch) -> None:
    redis.ping()  # the Redis connection exists before the network is taken away

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("enqueue_event touched the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.monotonic()
    event_id = enqueue_event(redis, "http://webhook.invalid:81/hook", "video.completed", VIDEO)
    assert time.monotonic() - started < 0.5
    monkeypatch.undo()

    status = delivery_status(redis, event_id)
    assert status is not None
    assert (status["status"], status["attempts"], status["next_attempt_at"]) == ("pending", 0, None)
    assert redis.zscore(webhooks.DUE_KEY, event_id) is not None


def test_enqueue_refuses_unknown_events_and_bad_urls(redis) -> None:
    with pytest.raises(ValueError):
        enqueue_event(redis, "https://example.com/hook", "video.exploded", VIDEO)
    with pytest.raises(InvalidRequest):
        enqueue_event(redis, "file:///etc/passwd", "video.completed", VIDEO)
    assert redis.dbsize() == 0


def test_run_forever_delivers_until_stopped(redis, receiver, make_sender) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=make_sender().run_forever, args=(stop, 0.02), daemon=True)
    thread.start()
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)

    deadline = time.monotonic() + 5
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert [headers["webhook-id"] for headers, _ in receiver.requests] == [event_id]
