"""At delivery, webhook targets are checked after DNS and the connection goes to the checked address only.

Real Redis, real receivers on 127.0.0.1 (HTTP and HTTPS with a test CA); DNS answers are injected through
the sender's ``resolver``, or come from the real ``getaddrinfo``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.exceptions import RedisError

from service.api import webhooks
from service.api.webhooks import delivery_status, enqueue_event
from service.core.webhook_urls import system_resolver
from tests.webhook_receivers import (
    VIDEO,
    Certificates,
    Receiver,
    Resolver,
    make_certificates,
    serve,
)

HOST = "hooks.wanserve.test"  # .test never resolves in real DNS: only the injected resolver knows it


def status_of(redis: Redis, event_id: str) -> dict:
    status = delivery_status(redis, event_id)
    assert status is not None
    return status


def test_an_internal_address_is_refused_at_delivery_without_being_contacted(
    redis, receiver, make_sender
) -> None:
    # enqueue_event checks only the form: a URL stored before the create-time check existed gets here.
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)

    assert make_sender(allow_private=False).run_once() == 1

    status = status_of(redis, event_id)
    assert (status["status"], status["attempts"]) == ("failed", 1)
    assert "public address, not 127.0.0.1" in status["last_error"]
    assert receiver.requests == []
    assert redis.zcard(webhooks.DUE_KEY) == 0


@pytest.mark.parametrize(
    "resolver",
    [
        Resolver("93.184.215.14", "127.0.0.1"),
        Resolver("::ffff:127.0.0.1"),
        # The real getaddrinfo, asked for a name that it maps to loopback.
        lambda host, port: system_resolver("localhost", port),
    ],
)
def test_a_name_that_resolves_to_an_internal_address_is_refused(
    redis, receiver, make_sender, resolver
) -> None:
    event_id = enqueue_event(redis, f"http://{HOST}:{receiver.port}/hook", "video.completed", VIDEO)

    assert make_sender(allow_private=False, resolver=resolver).run_once() == 1

    status = status_of(redis, event_id)
    assert (status["status"], status["attempts"]) == ("failed", 1)
    assert f"host {HOST} resolves to an internal address" in status["last_error"]
    assert receiver.requests == []


def test_the_connection_goes_to_the_checked_address_under_the_original_host(
    redis, receiver, make_sender
) -> None:
    # 127.0.0.2 refuses (the receiver listens on 127.0.0.1 only): the next checked address is tried.
    resolver = Resolver("127.0.0.2", "127.0.0.1")
    event_id = enqueue_event(redis, f"http://{HOST}:{receiver.port}/hook?a=1", "video.completed", VIDEO)

    assert make_sender(resolver=resolver).run_once() == 1

    assert status_of(redis, event_id)["status"] == "delivered"
    assert resolver.calls == [(HOST, receiver.port)], "resolved once, by the check; never again"
    [(headers, _)] = receiver.requests
    assert headers["host"] == f"{HOST}:{receiver.port}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"), (HOST,))


@pytest.fixture
def tls_receiver(certificates: Certificates) -> Iterator[Receiver]:
    state, stop = serve(tls=certificates.server_context())
    yield state
    stop()


def test_https_verifies_the_certificate_and_sends_sni_for_the_original_host(
    redis, tls_receiver, make_sender, certificates
) -> None:
    sender = make_sender(resolver=Resolver("127.0.0.1"), ssl_context=certificates.client_context())
    good = enqueue_event(redis, f"https://{HOST}:{tls_receiver.port}/hook", "video.completed", VIDEO)
    wrong = enqueue_event(
        redis, f"https://other.wanserve.test:{tls_receiver.port}/", "video.completed", VIDEO
    )

    assert sender.run_once() == 2

    assert status_of(redis, good)["status"] == "delivered"
    [(headers, _)] = tls_receiver.requests
    assert headers["host"] == f"{HOST}:{tls_receiver.port}"
    assert HOST in tls_receiver.server_names
    status = status_of(redis, wrong)
    assert (status["status"], status["attempts"]) == ("pending", 1)
    assert "ConnectError" in status["last_error"]
    assert "certificate" in status["last_error"].lower()


@pytest.mark.parametrize(
    "url",
    [
        "http://0177.0.0.1:{port}/hook",
        "http://0x7f000001:{port}/hook",
        "http://[::1:{port}/hook",
        "http://exämple.com:{port}/hook",
        "http://a@b@127.0.0.1:{port}/hook",
        "http://127.0.0.1:99999/hook",
        "gopher://127.0.0.1:{port}/hook",
        "http://127.0.0.1:{port}/a hook",
    ],
)
def test_a_url_that_reached_redis_by_another_route_fails_once_without_a_traceback(
    redis, receiver, make_sender, caplog, url
) -> None:
    url = url.format(port=receiver.port)
    event_id = "evt_" + "1" * 32
    redis.hset(webhooks.delivery_key(event_id), mapping={"url": url, "body": "{}", "status": "pending"})
    redis.zadd(webhooks.DUE_KEY, {event_id: time.time()})
    sender = make_sender()  # internal targets allowed: the URL itself is the problem

    with caplog.at_level(logging.DEBUG):
        assert sender.run_once() == 1
        assert sender.run_once(now=time.time() + 10 * max(webhooks.BACKOFF_S)) == 0

    status = status_of(redis, event_id)
    assert (status["status"], status["attempts"]) == ("failed", 1)
    assert status["last_error"].startswith("webhook_url ")
    assert receiver.requests == []
    assert not [record for record in caplog.records if record.exc_info or "Traceback" in record.getMessage()]
    assert any(event_id in record.getMessage() for record in caplog.records if record.levelname == "ERROR")


def test_a_name_that_does_not_resolve_is_retried(redis, make_sender) -> None:
    def no_such_name(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    event_id = enqueue_event(redis, f"https://{HOST}/hook", "video.completed", VIDEO)
    now = time.time()

    assert make_sender(resolver=no_such_name).run_once(now=now) == 1

    status = status_of(redis, event_id)
    assert (status["status"], status["attempts"]) == ("pending", 1)
    assert "could not resolve the host" in status["last_error"]
    assert status["next_attempt_at"] == pytest.approx(now + webhooks.BACKOFF_S[0])


def test_an_unexpected_error_ends_the_delivery_and_leaves_the_sender_running(
    redis, receiver, make_sender, caplog
) -> None:
    def broken(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver bug")

    broken_id = enqueue_event(redis, f"https://{HOST}/hook", "video.completed", VIDEO)
    fine_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)

    with caplog.at_level(logging.ERROR, logger="wanserve.webhooks"):
        assert make_sender(resolver=broken).run_once() == 2

    status = status_of(redis, broken_id)
    assert (status["status"], status["attempts"]) == ("failed", 1)
    assert status["last_error"] == "unexpected RuntimeError: resolver bug"
    assert status_of(redis, fine_id)["status"] == "delivered"
    assert [record.exc_info is not None for record in caplog.records if broken_id in record.getMessage()] == [
        True,
        False,
    ]


def test_a_failure_to_record_the_outcome_is_logged_and_frees_the_thread(
    redis, receiver, make_sender, caplog
) -> None:
    event_id = enqueue_event(redis, receiver.url, "video.completed", VIDEO)
    sender = make_sender(concurrency=1, lease_s=2.5)
    real_settle = sender._settle

    def redis_gone(*args: object, **kwargs: object) -> None:
        raise RedisError("Connection refused")

    sender._settle = redis_gone  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="wanserve.webhooks"):
        assert sender.run_once() == 1
    assert any("could not record" in record.getMessage() for record in caplog.records)
    assert status_of(redis, event_id)["status"] == "pending"

    # The lease runs out and the same sender (its one thread free again) retries.
    sender._settle = real_settle  # type: ignore[assignment]
    assert sender.run_once(now=time.time() + 3) == 1
    status = status_of(redis, event_id)
    assert (status["status"], status["attempts"]) == ("delivered", 2)
    assert len(receiver.requests) == 2
