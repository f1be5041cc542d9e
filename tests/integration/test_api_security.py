"""API keys, ownership, rate limits, backpressure, idempotency, size limits, cancel, expiry (real Redis)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from service.api.app import create_app
from service.api.cleaner import clean_expired
from service.core import redis_keys
from service.core.settings import Settings
from service.core.storage import LocalStorage
from service.core.video_store import VideoStore

BODY = {"prompt": "a red fox", "seconds": 1, "size": "64x64"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_code(response) -> str:
    return str(response.json()["error"]["code"])


def test_with_keys_every_route_needs_one(make_client) -> None:
    client = make_client(api_keys="alpha,beta")
    for method, path in [
        ("POST", "/v1/videos"),
        ("GET", "/v1/videos"),
        ("GET", "/v1/videos/video_" + "0" * 32),
    ]:
        response = client.request(method, path, json=BODY)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_code(response) == "invalid_api_key"
    assert client.post("/v1/videos", json=BODY, headers=bearer("gamma")).status_code == 401
    assert client.post("/v1/videos", json=BODY, headers={"Authorization": "Basic alpha"}).status_code == 401
    assert client.get("/healthz").status_code == 200, "probes stay open"


def test_each_key_sees_only_its_own_videos(make_client) -> None:
    client = make_client(api_keys="alpha,beta")
    mine = client.post("/v1/videos", json=BODY, headers=bearer("alpha")).json()["id"]
    assert client.get(f"/v1/videos/{mine}", headers=bearer("alpha")).status_code == 200
    for method, path in [
        ("GET", f"/v1/videos/{mine}"),
        ("GET", f"/v1/videos/{mine}/content"),
        ("POST", f"/v1/videos/{mine}/cancel"),
        ("DELETE", f"/v1/videos/{mine}"),
    ]:
        response = client.request(method, path, headers=bearer("beta"))
        assert response.status_code == 404, path
    assert client.get("/v1/videos", headers=bearer("beta")).json()["data"] == []
    assert [v["id"] for v in client.get("/v1/videos", headers=bearer("alpha")).json()["data"]] == [mine]


def test_keys_from_a_file(make_client, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# operators\nfile-key\n")
    client = make_client(api_keys_file=keys)
    assert client.post("/v1/videos", json=BODY, headers=bearer("file-key")).status_code == 200
    assert client.post("/v1/videos", json=BODY).status_code == 401


def test_no_keys_means_open_with_a_loud_warning(make_client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wanserve.api"):
        client = make_client()
    assert "NO API KEYS CONFIGURED" in caplog.text
    assert client.post("/v1/videos", json=BODY).status_code == 200


def test_rate_limit_per_key(make_client) -> None:
    client = make_client(api_keys="alpha,beta", rate_limit_per_minute=2)
    for _ in range(2):
        assert client.post("/v1/videos", json=BODY, headers=bearer("alpha")).status_code == 200
    limited = client.post("/v1/videos", json=BODY, headers=bearer("alpha"))
    assert limited.status_code == 429
    assert error_code(limited) == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert client.post("/v1/videos", json=BODY, headers=bearer("beta")).status_code == 200


def test_a_full_queue_pushes_back(make_client, redis: Redis) -> None:
    client = make_client(max_queue_length=2)
    for _ in range(2):
        assert client.post("/v1/videos", json=BODY).status_code == 200
    full = client.post("/v1/videos", json=BODY)
    assert (full.status_code, error_code(full)) == (429, "queue_full")
    assert int(full.headers["retry-after"]) > 0
    assert Queue("wanserve", connection=redis).count == 2


def test_idempotency_key_returns_the_same_video_once(make_client, redis: Redis) -> None:
    client = make_client(api_keys="alpha,beta")
    headers = {**bearer("alpha"), "Idempotency-Key": "retry-1"}
    first = client.post("/v1/videos", json=BODY, headers=headers)
    again = client.post("/v1/videos", json=BODY, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert Queue("wanserve", connection=redis).count == 1, "enqueued once"
    conflict = client.post("/v1/videos", json={**BODY, "seconds": 2}, headers=headers)
    assert (conflict.status_code, error_code(conflict)) == (409, "idempotency_key_reused")
    other_owner = client.post(
        "/v1/videos", json=BODY, headers={**bearer("beta"), "Idempotency-Key": "retry-1"}
    )
    assert other_owner.json()["id"] != first.json()["id"], "keys are scoped per API key"


def test_a_refused_request_does_not_burn_its_idempotency_key(make_client) -> None:
    client = make_client(max_queue_length=1)
    queued = client.post("/v1/videos", json=BODY).json()["id"]
    headers = {"Idempotency-Key": "k"}
    assert client.post("/v1/videos", json=BODY, headers=headers).status_code == 429
    assert client.post(f"/v1/videos/{queued}/cancel").status_code == 200  # the queue has room again
    retried = client.post("/v1/videos", json=BODY, headers=headers)
    assert retried.status_code == 200
    assert retried.json()["id"] != queued


def test_oversized_bodies_are_413(make_client) -> None:
    client = make_client(max_body_bytes=2048)
    response = client.post("/v1/videos", json={**BODY, "prompt": "x" * 4000})
    assert (response.status_code, error_code(response)) == (413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    streamed = client.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_work_budget_per_request(make_client) -> None:
    client = make_client(max_work=17 * 64 * 64 * 4)
    assert client.post("/v1/videos", json={**BODY, "num_inference_steps": 4}).status_code == 200
    response = client.post("/v1/videos", json={**BODY, "num_inference_steps": 5})
    assert (response.status_code, error_code(response)) == (400, "request_too_large")


def test_cancel_a_queued_video(make_client, redis: Redis) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=BODY).json()["id"]
    cancelled = client.post(f"/v1/videos/{video_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert (
        Job.fetch(video_id, connection=redis, serializer=redis_keys.SERIALIZER).get_status()
        == JobStatus.CANCELED
    )
    assert client.get(f"/v1/videos/{video_id}").json()["status"] == "cancelled"
    again = client.post(f"/v1/videos/{video_id}/cancel")
    assert (again.status_code, error_code(again)) == (409, "video_not_cancellable")


def test_expired_videos_lose_record_and_files(settings: Settings, redis: Redis, engine) -> None:
    from worker.serve import make_worker

    client = TestClient(create_app(settings))
    old, kept = (client.post("/v1/videos", json=BODY).json()["id"] for _ in range(2))
    make_worker(settings, engine, redis).work(burst=True, with_scheduler=False)
    store, storage = VideoStore(redis, settings.queue), LocalStorage(settings.videos_dir)
    view = client.get(f"/v1/videos/{old}").json()
    assert abs(view["expires_at"] - view["completed_at"] - settings.result_ttl_s) <= 1  # both rounded down
    ended = store.get(old)["completed_at"]
    store.update(kept, completed_at=ended + 100)  # ended later: not yet expired at the chosen instant
    assert clean_expired(store, storage, ttl_s=60, now=ended + 61) == 1
    assert client.get(f"/v1/videos/{old}").status_code == 404
    assert not storage.exists(old)
    assert client.get(f"/v1/videos/{kept}").status_code == 200
    assert storage.exists(kept)
