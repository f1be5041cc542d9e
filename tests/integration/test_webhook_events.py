"""Videos that end tell their webhook: completed, failed and cancelled, signed, through the real sender."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.http.app import create_app
from service.settings import Settings
from service.webhooks import WebhookSender, verify
from tests.integration.test_webhooks import Receiver
from tests.integration.test_webhooks import receiver as receiver
from worker.main import make_worker

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"prompt": "a red fox", "seconds": 1, "size": "32x32", "num_inference_steps": 2}


@pytest.fixture
def hooked(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secret": SECRET})


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

    assert WebhookSender(redis, SECRET).run_once() == 3
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
