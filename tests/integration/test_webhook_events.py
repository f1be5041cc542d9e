"""Videos that end tell their webhook: completed, failed and cancelled, signed, through the real sender."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.api.webhooks import WebhookSender, enqueue_event, verify
from service.core.settings import Settings
from tests.webhook_receivers import Receiver, Resolver
from worker.serve import make_worker

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"prompt": "a red fox", "seconds": 1, "size": "32x32", "num_inference_steps": 2}


@pytest.fixture
def hooked(settings: Settings) -> Settings:
    """Webhooks on, to receivers on this machine (WANSERVE_WEBHOOK_ALLOW_PRIVATE=1)."""
    return settings.model_copy(update={"webhook_secret": SECRET, "webhook_allow_private": True})


def events(receiver: Receiver) -> list[dict]:
    out = []
    for headers, body in receiver.requests:
        assert verify(SECRET, headers, body)
        out.append(json.loads(body))
    return out


def test_completed_failed_and_cancelled_videos_call_their_webhooks(
    hooked: Settings, redis: Redis, engine, receiver: Receiver, tmp_path: Path
) -> None:
    client = TestClient(create_app(hooked))
    done = client.post("/v1/videos", json={**BODY, "webhook_url": receiver.url}).json()["id"]
    queued = client.post("/v1/videos", json={**BODY, "webhook_url": receiver.url}).json()["id"]
    silent = client.post("/v1/videos", json=BODY).json()["id"]
    assert client.post(f"/v1/videos/{queued}/cancel").json()["status"] == "cancelled"
    make_worker(hooked, engine, redis).work(burst=True, with_scheduler=False)

    blocked = tmp_path / "file"
    blocked.write_text("")
    failing = hooked.model_copy(update={"storage_dir": blocked})
    failed = client.post("/v1/videos", json={**BODY, "webhook_url": receiver.url}).json()["id"]
    make_worker(failing, engine, redis).work(burst=True, with_scheduler=False)

    sender = WebhookSender(redis, SECRET, allow_private=hooked.webhook_allow_private)
    assert sender.run_once() == 3
    sender.close()
    received = {event["data"]["id"]: event for event in events(receiver)}
    assert set(received) == {done, queued, failed}, "no webhook for the video that named none"
    assert silent not in received
    assert received[done]["type"] == "video.completed"
    assert received[done]["data"]["status"] == "completed"
    assert received[queued]["type"] == "video.cancelled"
    assert received[failed]["type"] == "video.failed"
    assert received[failed]["data"]["error"]["code"] == "storage_error"


def test_a_server_default_webhook_and_its_validation(hooked: Settings, settings: Settings, receiver) -> None:
    client = TestClient(create_app(hooked.model_copy(update={"webhook_url": receiver.url})))
    video = client.post("/v1/videos", json=BODY)
    assert video.status_code == 200
    bad = client.post("/v1/videos", json={**BODY, "webhook_url": "ftp://example.com/hook"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_webhook_url")
    off = TestClient(create_app(settings)).post("/v1/videos", json={**BODY, "webhook_url": receiver.url})
    assert (off.status_code, off.json()["error"]["code"]) == (400, "webhooks_disabled")


INTERNAL = [
    "http://127.0.0.1:8000/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0x7f000001/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://192.168.0.1/hook",
    "http://100.64.0.1/hook",
    "http://[fc00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/hook",
    "http://localhost:8000/hook",
    "http://api.localhost/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/hook",
    "http://printer.local/hook",
]


def test_the_api_refuses_internal_webhook_urls(settings: Settings) -> None:
    client = TestClient(create_app(settings.model_copy(update={"webhook_secret": SECRET})))
    for url in INTERNAL:
        answer = client.post("/v1/videos", json={**BODY, "webhook_url": url})
        error = answer.json()["error"]
        assert answer.status_code == 400, url
        assert (error["code"], error["param"]) == ("invalid_webhook_url", "webhook_url")
    assert client.get("/v1/videos").json()["data"] == []


def test_the_api_refuses_an_internal_server_default_webhook(settings: Settings) -> None:
    update = {"webhook_secret": SECRET, "webhook_url": "http://169.254.169.254/latest/meta-data/"}
    answer = TestClient(create_app(settings.model_copy(update=update))).post("/v1/videos", json=BODY)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_webhook_url")


def test_the_operator_setting_allows_internal_receivers_end_to_end(
    hooked: Settings, redis: Redis, receiver: Receiver
) -> None:
    client = TestClient(create_app(hooked))
    video = client.post("/v1/videos", json={**BODY, "webhook_url": receiver.url}).json()["id"]
    client.post(f"/v1/videos/{video}/cancel")
    # A name the injected resolver maps to the receiver: checked after DNS, and allowed by the setting.
    named = f"http://hooks.wanserve.test:{receiver.port}/named"
    named_id = enqueue_event(redis, named, "video.completed", {"id": "video_named"})
    sender = WebhookSender(redis, SECRET, allow_private=True, resolver=Resolver("127.0.0.1"))
    assert sender.run_once() == 2
    sender.close()
    assert {event["data"]["id"] for event in events(receiver)} == {video, "video_named"}
    assert named_id in {headers["webhook-id"] for headers, _ in receiver.requests}


def test_the_api_refuses_to_start_with_a_secret_verifiers_would_reject(settings: Settings) -> None:
    with pytest.raises(ValueError, match="WANSERVE_WEBHOOK_SECRET"):
        create_app(settings.model_copy(update={"webhook_secret": "a plain shared secret"}))
