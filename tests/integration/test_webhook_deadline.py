"""A slow receiver is cut at the delivery deadline and never delays another receiver's webhooks.

The slow receiver is a real socket server on 127.0.0.1 that sends its status line one byte every 0.5 s:
each read is quick, only the whole answer is slow.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from service.api.webhooks import delivery_status, enqueue_event
from tests.webhook_receivers import VIDEO, Receiver, Trickler

SLACK_S = 1.0


def status_of(redis: Redis, event_id: str) -> dict:
    status = delivery_status(redis, event_id)
    assert status is not None
    return status


def wait_for(condition, timeout_s: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held (fails the test past ``timeout_s``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "timed out waiting"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_trickling_receiver_is_cut_at_the_deadline_while_another_is_served(
    redis, receiver: Receiver, trickler: Trickler, make_sender
) -> None:
    sender = make_sender(deadline_s=2.0)
    slow = enqueue_event(redis, trickler.url, "video.completed", VIDEO)
    fast = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    attempted: list[int] = []
    runner = threading.Thread(target=lambda: attempted.append(sender.run_once()))

    start = time.monotonic()
    runner.start()
    assert wait_for(lambda: receiver.requests) < 1.0
    wait_for(lambda: status_of(redis, fast)["status"] == "delivered", timeout_s=1.0)
    in_flight = status_of(redis, slow)
    assert (in_flight["status"], in_flight["attempts"], in_flight["last_error"]) == ("pending", 1, None)
    runner.join(timeout=10)
    elapsed = time.monotonic() - start

    assert attempted == [2]
    assert 2.0 <= elapsed < 2.0 + SLACK_S
    status = status_of(redis, slow)
    assert (status["status"], status["attempts"], status["last_status_code"]) == ("pending", 1, None)
    assert status["last_error"] == "DeadlineExceeded: no response within the 2 s delivery deadline"
    assert status["next_attempt_at"] is not None
    assert trickler.connections == 1


def test_run_forever_serves_new_events_while_a_slow_one_is_in_flight(
    redis, receiver: Receiver, trickler: Trickler, make_sender
) -> None:
    sender = make_sender(deadline_s=3.0)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run_forever, args=(stop, 0.02), daemon=True)
    slow = enqueue_event(redis, trickler.url, "video.completed", VIDEO)
    thread.start()
    try:
        wait_for(lambda: trickler.connections == 1)
        fast = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
        assert wait_for(lambda: status_of(redis, fast)["status"] == "delivered") < 1.0
        assert status_of(redis, slow)["last_error"] is None, "the slow attempt is still in flight"
        wait_for(lambda: status_of(redis, slow)["last_error"] is not None, timeout_s=3.0 + SLACK_S)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert "3 s delivery deadline" in status_of(redis, slow)["last_error"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections and never says a word (not even a TLS handshake)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_silent_receiver_is_cut_at_the_deadline(redis, make_sender, silent_port: int, scheme: str) -> None:
    event_id = enqueue_event(redis, f"{scheme}://127.0.0.1:{silent_port}/hook", "video.completed", VIDEO)
    start = time.monotonic()

    assert make_sender(deadline_s=1.0).run_once() == 1

    assert 1.0 <= time.monotonic() - start < 1.0 + SLACK_S
    assert "1 s delivery deadline" in status_of(redis, event_id)["last_error"]


def test_a_slow_dns_lookup_counts_against_the_deadline(redis, make_sender) -> None:
    def slow_resolver(host: str, port: int) -> list[str]:
        time.sleep(3)
        return ["127.0.0.1"]

    event_id = enqueue_event(redis, "https://hooks.wanserve.test/hook", "video.completed", VIDEO)
    start = time.monotonic()

    assert make_sender(deadline_s=1.0, resolver=slow_resolver).run_once() == 1

    assert time.monotonic() - start < 1.0 + SLACK_S
    status = status_of(redis, event_id)
    assert (status["status"], status["last_error"]) == (
        "pending",
        "DeadlineExceeded: no response within the 1 s delivery deadline",
    )
