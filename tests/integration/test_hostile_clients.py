"""What a hostile client tried, against the real app and a real Redis: none of it may write a poisoned
record, get past admission, leak detail, leave Redis keys behind, or get a 500 or a plain-text answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue

from service.api.app import create_app
from service.api.cleaner import clean_expired
from service.core import redis_keys
from service.core.lost_jobs import settle_lost_jobs
from service.core.settings import Settings
from service.core.storage import LocalStorage, sha256_of
from service.core.video_store import VideoStore

BODY = {"prompt": "a red fox", "seconds": 1, "size": "64x64"}
LONE_SURROGATE = "\\ud800"  # as it is spelled inside a JSON string


def error_of(response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    return error


def post_raw(client: TestClient, raw: bytes, content_type: str = "application/json"):
    return client.post("/v1/videos", content=raw, headers={"content-type": content_type})


def traces(redis: Redis, video_id: str) -> list[str]:
    """Every Redis key that names ``video_id`` or holds it as a member, field or element."""
    found = []
    for raw_key in redis.scan_iter(count=1000):
        key = raw_key.decode()
        if video_id in key:
            found.append(key)
            continue
        kind = redis.type(raw_key).decode()
        members: list[bytes] = []
        if kind == "zset":
            members = redis.zrange(raw_key, 0, -1)
        elif kind == "list":
            members = redis.lrange(raw_key, 0, -1)
        elif kind == "set":
            members = list(redis.smembers(raw_key))
        elif kind == "hash":
            members = list(redis.hkeys(raw_key))
        if any(video_id in member.decode(errors="replace") for member in members):
            found.append(key)
    return found


# -- 1. text that is not Unicode, blank prompts, booleans ------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "size", "model", "webhook_url", "cache"])
def test_a_lone_surrogate_in_any_text_field_is_a_400_and_writes_nothing(
    make_client, redis: Redis, field: str
) -> None:
    client = make_client()
    body = json.dumps(BODY)[:-1] + f', "{field}": "x{LONE_SURROGATE}"}}'
    error_of(post_raw(client, body.encode()), 400, field)
    assert redis.dbsize() == 0, "nothing written"
    listing = client.get("/v1/videos")
    assert (listing.status_code, listing.json()["data"]) == (200, [])


@pytest.mark.parametrize(
    "fragment",
    [
        f'"cache": {{"method": "adaptive", "x{LONE_SURROGATE}": 1}}',
        f'"cache": {{"method": "{LONE_SURROGATE}"}}',
        f'"x{LONE_SURROGATE}": 1',
    ],
)
def test_a_lone_surrogate_in_a_key_or_nested_value_is_a_400(make_client, redis: Redis, fragment: str) -> None:
    client = make_client()
    body = json.dumps(BODY)[:-1] + ", " + fragment + "}"
    error = error_of(post_raw(client, body.encode()), 400)
    assert error["code"] == "invalid_unicode"
    assert redis.dbsize() == 0


def test_invalid_utf8_in_a_form_is_refused_or_replaced_never_stored_raw(make_client, redis: Redis) -> None:
    client = make_client()
    for raw, content_type in [
        (b"prompt=x&size=64x64&seconds=1&negative_prompt=%ED%A0%80", "application/x-www-form-urlencoded"),
        (
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xed\xa0\x80x\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ]:
        response = post_raw(client, raw, content_type)
        assert response.status_code in (200, 400), response.text
    listing = client.get("/v1/videos")
    assert listing.status_code == 200
    for video in listing.json()["data"]:
        assert client.get(f"/v1/videos/{video['id']}").status_code == 200


def test_a_record_stored_with_a_lone_surrogate_before_the_fix_still_reads(make_client, redis: Redis) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=BODY).json()["id"]
    params = json.loads(redis.hget(redis_keys.video_key(video_id), "params"))
    redis.hset(redis_keys.video_key(video_id), "params", json.dumps({**params, "negative_prompt": "\ud800"}))
    assert client.get("/v1/videos").status_code == 200
    view = client.get(f"/v1/videos/{video_id}")
    assert view.status_code == 200
    assert view.json()["negative_prompt"] == "\ud800"


@pytest.mark.parametrize("prompt", ["\u200b", "\u200b\u200c\u200d\ufeff", " \u2060 \u3164 ", "\u0301\u034f"])
def test_a_prompt_of_invisible_characters_is_blank(make_client, prompt: str) -> None:
    error_of(make_client().post("/v1/videos", json={**BODY, "prompt": prompt}), 400, "prompt")


@pytest.mark.parametrize(
    "field", ["seconds", "seed", "num_frames", "fps", "num_inference_steps", "guidance_scale"]
)
def test_booleans_are_not_numbers(make_client, redis: Redis, field: str) -> None:
    body = {"prompt": "a red fox", "size": "64x64", field: True}  # true would read as 1: a valid value
    error_of(make_client().post("/v1/videos", json=body), 400, field)
    assert redis.dbsize() == 0


# -- 7. deep JSON and unexpected errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": "x", "cache": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"prompt": "x", "cache": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
def test_deep_json_is_a_400_in_our_error_shape(make_client, raw: bytes) -> None:
    error_of(post_raw(make_client(max_body_bytes=1 << 20), raw), 400)


def test_an_unexpected_error_is_a_json_500_without_a_traceback(settings: Settings, caplog) -> None:
    app = create_app(settings)

    def broken() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        error = error_of(client.get("/broken"), 500)
    assert error["code"] == "internal_error"
    assert "secret" not in error["message"] and "Traceback" not in error["message"]
    assert "secret internals" in caplog.text, "the operator's log has it"


# -- 4. idempotency and the rate limit ---------------------------------------------------------------


def test_replaying_an_idempotency_key_counts_against_the_rate_limit(make_client) -> None:
    client = make_client(rate_limit_per_minute=3)
    headers = {"Idempotency-Key": "K"}
    first = client.post("/v1/videos", json=BODY, headers=headers)
    assert first.status_code == 200
    client.delete(f"/v1/videos/{first.json()['id']}")
    statuses = [client.post("/v1/videos", json=BODY, headers=headers).status_code for _ in range(20)]
    assert statuses.count(429) >= 17, statuses


def test_a_deleted_videos_idempotency_key_can_be_used_again(make_client, redis: Redis) -> None:
    client = make_client()
    headers = {"Idempotency-Key": "K"}
    first = client.post("/v1/videos", json=BODY, headers=headers).json()["id"]
    assert client.delete(f"/v1/videos/{first}").status_code == 200
    started = time.monotonic()
    again = client.post("/v1/videos", json=BODY, headers=headers)
    assert time.monotonic() - started < 1.0
    assert again.status_code == 200, again.text
    assert again.json()["id"] != first
    assert client.post("/v1/videos", json=BODY, headers=headers).json()["id"] == again.json()["id"]


def test_a_key_whose_video_is_still_being_written_answers_at_once(make_client, redis: Redis) -> None:
    client = make_client()
    context = client.app.state.context
    # Another request has claimed the key and not yet written its video.
    context.idempotency.claim("public", "K", BODY, "video_" + "f" * 32)
    started = time.monotonic()
    response = client.post("/v1/videos", json=BODY, headers={"Idempotency-Key": "K"})
    assert time.monotonic() - started < 0.5, "no request thread sleeps waiting for another"
    assert error_of(response, 409)["code"] == "idempotency_key_in_progress"
    assert 0 < redis.ttl(context.idempotency.slot("public", "K")) <= 60, "a pending claim is short-lived"


# -- 6. the queue limit under concurrency -----------------------------------------------------------


def test_concurrent_creates_never_overshoot_the_queue_limit(make_client, redis: Redis) -> None:
    client = make_client(max_queue_length=3)
    statuses: list[int] = []
    lock = threading.Lock()
    gate = threading.Barrier(20)

    def create() -> None:
        gate.wait()
        for _ in range(2):
            status = client.post("/v1/videos", json=BODY).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Queue("wanserve", connection=redis).count == 3
    assert sorted(set(statuses)) == [200, 429] and statuses.count(200) == 3, statuses


# -- 8. nothing of a video outlives its record -----------------------------------------------------


def test_a_cancelled_then_deleted_video_leaves_nothing_in_redis(make_client, redis: Redis) -> None:
    client = make_client()
    headers = {"Idempotency-Key": "K"}
    video_id = client.post("/v1/videos", json=BODY, headers=headers).json()["id"]
    assert client.post(f"/v1/videos/{video_id}/cancel").status_code == 200
    assert client.delete(f"/v1/videos/{video_id}").status_code == 200
    assert traces(redis, video_id) == []
    assert redis.keys("wanserve:idem:*") == [], "the Idempotency-Key claim went with the video"


def test_a_deleted_queued_video_leaves_nothing_in_redis(make_client, redis: Redis) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=BODY).json()["id"]
    assert client.delete(f"/v1/videos/{video_id}").status_code == 200
    assert traces(redis, video_id) == []


def test_an_expired_cancelled_video_leaves_nothing_in_redis(make_client, redis: Redis, settings) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=BODY).json()["id"]
    client.post(f"/v1/videos/{video_id}/cancel")
    store = VideoStore(redis, settings.queue)
    ended = store.get(video_id)["completed_at"]
    assert clean_expired(store, LocalStorage(settings.videos_dir), ttl_s=60, now=ended + 61) == 1
    assert traces(redis, video_id) == []


# -- 5. stuck records --------------------------------------------------------------------------------


def test_expiry_is_not_starved_by_many_videos_that_never_ended(redis: Redis, settings: Settings) -> None:
    store = VideoStore(redis, settings.queue)
    old = int((time.time() - 3600) * 1_000_000)
    with redis.pipeline() as pipe:
        for n in range(1200):  # never ended, older than the one that did
            video_id = f"video_{n:032x}"
            pipe.hset(
                redis_keys.video_key(video_id), mapping={"id": json.dumps(video_id), "status": '"queued"'}
            )
            pipe.zadd(redis_keys.VIDEOS_INDEX_KEY, {video_id: old + n})
        done = "video_" + "e" * 32
        pipe.hset(
            redis_keys.video_key(done),
            mapping={"id": json.dumps(done), "status": '"completed"', "completed_at": str(time.time() - 120)},
        )
        pipe.zadd(redis_keys.VIDEOS_INDEX_KEY, {done: old + 5000})
        pipe.execute()
    assert clean_expired(store, LocalStorage(settings.videos_dir), ttl_s=60) == 1
    assert not redis.exists(redis_keys.video_key(done))


def test_a_job_rq_gave_up_ends_failed_in_its_record(make_client, redis: Redis, settings: Settings) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=BODY).json()["id"]
    store = VideoStore(redis, settings.queue)
    store.update(video_id, status="in_progress", stage="denoise", progress=40)
    # What RQ does to a job whose worker died with no retries left (StartedJobRegistry.cleanup).
    job = store._job(video_id)
    assert job is not None
    queue = Queue(settings.queue, connection=redis, serializer=redis_keys.SERIALIZER)
    queue.remove(job)
    with redis.pipeline() as pipe:
        job.set_status("failed", pipeline=pipe)
        job._handle_failure("Moved to FailedJobRegistry, due to AbandonedJobError", pipe, worker_name="")
        pipe.execute()

    assert settle_lost_jobs(store, settings.result_ttl_s) == 1
    record = store.get(video_id)
    assert record["status"] == "failed" and record["completed_at"] is not None
    assert record["error"]["code"] == "worker_failed"
    assert "AbandonedJobError" not in record["error"]["message"], "RQ's text stays in the logs"
    view = client.get(f"/v1/videos/{video_id}").json()
    assert view["expires_at"] is not None
    assert settle_lost_jobs(store, settings.result_ttl_s) == 0, "ended once"


# -- 9. /content: Range, conditional requests, HEAD, chunked limits -------------------------------


@pytest.fixture
def completed(make_client, redis: Redis, settings: Settings) -> Callable[[], tuple[TestClient, str, bytes]]:
    """A video made complete by hand: a real file in storage and a record that says so."""

    def make() -> tuple[TestClient, str, bytes]:
        client = make_client()
        video_id = client.post("/v1/videos", json=BODY).json()["id"]
        content = bytes(range(256)) * 4
        storage = LocalStorage(settings.videos_dir)
        path = storage.write(video_id, "video", lambda tmp: tmp.write_bytes(content))
        VideoStore(redis, settings.queue).update(
            video_id, status="completed", completed_at=time.time(), files={"video": sha256_of(path)}
        )
        return client, video_id, content

    return make


@pytest.mark.parametrize(
    "header", ["bytes=5-2", "bytes=abc", "items=0-1", "bytes=", "bytes=1-2-3", "bytes 0-1"]
)
def test_a_malformed_range_is_ignored(completed, header: str) -> None:
    client, video_id, content = completed()
    response = client.get(f"/v1/videos/{video_id}/content", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == content


def test_ranges_that_are_valid_are_served(completed) -> None:
    client, video_id, content = completed()
    url = f"/v1/videos/{video_id}/content"
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, content[10:20])
    tail = client.get(url, headers={"Range": "bytes=-5"})
    assert (tail.status_code, tail.content) == (206, content[-5:])
    beyond_end = client.get(url, headers={"Range": "bytes=1000-99999"})
    assert (beyond_end.status_code, beyond_end.content) == (206, content[1000:])


@pytest.mark.parametrize("header", ["bytes=5000-6000", "bytes=-0", "bytes=1024-"])
def test_an_unsatisfiable_range_is_a_416_in_our_shape(completed, header: str) -> None:
    client, video_id, content = completed()
    response = client.get(f"/v1/videos/{video_id}/content", headers={"Range": header})
    assert error_of(response, 416, "Range")["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{len(content)}"


def test_conditional_requests_match_weakly_and_the_304_keeps_cache_control(completed) -> None:
    client, video_id, _ = completed()
    url = f"/v1/videos/{video_id}/content"
    etag = client.get(url).headers["etag"]
    for header in [etag, f"W/{etag}", "*", f'"other", {etag}', f'"other", W/{etag}']:
        response = client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.headers["cache-control"] == "private, max-age=86400"
        assert response.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_head_on_content(completed) -> None:
    client, video_id, content = completed()
    response = client.head(f"/v1/videos/{video_id}/content")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(content)
    assert response.content == b""
    assert client.head("/v1/videos/video_" + "0" * 32 + "/content").status_code == 404


@pytest.mark.parametrize("kind", ["multipart", "urlencoded"])
def test_chunked_forms_over_the_limit_are_413(make_client, kind: str) -> None:
    client = make_client(max_body_bytes=2048)

    def chunks():
        if kind == "multipart":
            yield b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
        else:
            yield b"prompt="
        for _ in range(20):
            yield b"x" * 500
        if kind == "multipart":
            yield b"\r\n--b--\r\n"

    content_type = (
        "multipart/form-data; boundary=b" if kind == "multipart" else ("application/x-www-form-urlencoded")
    )
    response = client.post("/v1/videos", content=chunks(), headers={"content-type": content_type})
    assert error_of(response, 413)["code"] == "request_too_large"


# -- 10. leaks of detail -----------------------------------------------------------------------------


def test_readyz_does_not_say_where_redis_is(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "127.0.0.1" not in response.text and str(port) not in response.text


def test_a_deleted_after_cursor_is_a_400_on_after(make_client) -> None:
    client = make_client()
    first, second = (client.post("/v1/videos", json=BODY).json()["id"] for _ in range(2))
    client.delete(f"/v1/videos/{second}")
    error = error_of(client.get(f"/v1/videos?after={second}"), 400, "after")
    assert error["code"] == "invalid_cursor"
    assert [v["id"] for v in client.get(f"/v1/videos?after={first}&order=asc").json()["data"]] == []
