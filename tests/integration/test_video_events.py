"""``GET /v1/videos/{id}/events``: a real uvicorn, a real RQ worker on the tiny model, real Redis pub/sub."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from redis import Redis
from rq.job import Job, JobStatus

from service.api.context import ASYNC_REDIS_CONNECTIONS
from service.core import redis_keys
from service.core.settings import Settings
from tests.processes import wait_until
from tests.redis_clients import clients, subscribers
from tests.sse import Follower
from worker.serve import make_worker

# Long enough that a test which passes was woken by Redis, not by a heartbeat's re-read.
NO_HEARTBEAT = {"events_heartbeat_s": 60.0}


def create(base: str, headers: dict[str, str] | None = None, **body: Any) -> str:
    body = {"prompt": "a red fox", "seconds": 1, "size": "64x64", "num_inference_steps": 6, **body}
    response = httpx.post(f"{base}/v1/videos", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def follow(base: str, video_id: str, **headers: str) -> Follower:
    follower = Follower(f"{base}/v1/videos/{video_id}/events", headers=headers)
    assert follower.started.wait(10), "no first event"
    return follower


def test_every_step_arrives_as_an_event_and_the_stream_ends_with_the_video(
    live_api: Callable[..., str], settings: Settings, engine: Any, redis: Redis
) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base)
    follower = follow(base, video_id)
    assert follower.status_code == 200 and follower.content_type.startswith("text/event-stream")
    assert follower.videos()[0]["status"] == "queued"

    make_worker(settings, engine, redis).work(burst=True, with_scheduler=False)
    follower.wait_closed(20)

    videos = follower.videos()
    progress = [video["progress"] for video in videos]
    assert progress == sorted(progress) and progress[-1] == 100
    assert len({p for p in progress if 0 < p < 100}) >= 4, f"a step's progress was lost: {progress}"
    assert {"denoise", "done"} <= {video["stage"] for video in videos}
    assert [event.event for event in follower.events][-2:] == ["video", "end"]
    final = follower.events[-1]
    assert final.data == videos[-1] and final.data["status"] == "completed"
    assert final.data == httpx.get(f"{base}/v1/videos/{video_id}").json()
    ids = [int(event.id) for event in follower.events if event.id is not None]
    assert ids == sorted(ids), "event ids are the record's versions, growing"


def test_a_client_that_comes_back_after_the_end_still_gets_it(
    live_api: Callable[..., str], settings: Settings, engine: Any, redis: Redis
) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base, num_inference_steps=2)
    first = follow(base, video_id)
    last_seen = first.events[-1].id
    make_worker(settings, engine, redis).work(burst=True, with_scheduler=False)
    first.wait_closed(20)

    again = follow(base, video_id, **{"Last-Event-ID": str(last_seen)})
    again.wait_closed(10)
    assert [event.event for event in again.events] == ["video", "end"]
    assert again.events[-1].data["status"] == "completed"

    latest = again.events[-1].id
    once_more = follow(base, video_id, **{"Last-Event-ID": str(latest)})
    once_more.wait_closed(10)
    assert [event.event for event in once_more.events][-1] == "end", "the end is never withheld"


def test_a_reconnect_with_the_latest_id_is_not_sent_it_again(live_api: Callable[..., str]) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base)
    first = follow(base, video_id)
    latest = first.events[-1].id
    again = Follower(f"{base}/v1/videos/{video_id}/events", headers={"Last-Event-ID": str(latest)})
    time.sleep(0.5)
    assert again.events == [], "nothing changed since the client's last event"
    assert httpx.post(f"{base}/v1/videos/{video_id}/cancel").status_code == 200
    again.wait_closed(10)
    assert [(event.event, event.data["status"]) for event in again.events] == [
        ("video", "cancelled"),
        ("end", "cancelled"),
    ]
    first.wait_closed(10)


def test_a_queued_video_hears_its_queue_position_move(live_api: Callable[..., str]) -> None:
    base = live_api(**NO_HEARTBEAT)
    ahead = create(base)
    video_id = create(base)
    follower = follow(base, video_id)
    assert follower.videos()[-1]["queue_position"] == 1
    httpx.delete(f"{base}/v1/videos/{ahead}")
    wait_until(lambda: follower.videos()[-1]["queue_position"] == 0, 5, "the new queue position")


def test_a_deleted_video_ends_its_stream_with_an_error(live_api: Callable[..., str]) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base)
    follower = follow(base, video_id)
    httpx.delete(f"{base}/v1/videos/{video_id}")
    follower.wait_closed(5)
    assert follower.events[-1].event == "error"
    assert follower.events[-1].data["error"]["code"] == "video_not_found"


def test_unknown_and_foreign_videos_are_404_and_keys_are_required(live_api: Callable[..., str]) -> None:
    base = live_api(api_keys="alpha,beta", **NO_HEARTBEAT)
    alpha = {"Authorization": "Bearer alpha"}
    video_id = create(base, headers=alpha)
    assert httpx.get(f"{base}/v1/videos/{video_id}/events").status_code == 401
    foreign = httpx.get(f"{base}/v1/videos/{video_id}/events", headers={"Authorization": "Bearer beta"})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "video_not_found"
    unknown = httpx.get(f"{base}/v1/videos/video_{'0' * 32}/events", headers=alpha)
    assert unknown.status_code == 404
    mine = follow(base, video_id, **alpha)
    assert mine.status_code == 200 and mine.videos()[0]["id"] == video_id


def test_an_idle_stream_carries_heartbeat_comments(live_api: Callable[..., str]) -> None:
    base = live_api(events_heartbeat_s=0.2)
    follower = follow(base, create(base))
    wait_until(lambda: len(follower.comments) >= 3, 5, "heartbeats")
    assert set(follower.comments) == {"keep-alive"}
    assert len(follower.videos()) == 1, "a heartbeat re-read of an unchanged video sends nothing"


def test_a_lost_subscription_is_made_again_and_nothing_is_missed(
    live_api: Callable[..., str], redis: Redis, settings: Settings
) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base)
    follower = follow(base, video_id)
    wait_until(lambda: len(subscribers(redis)) == 1, 5, "the subscription")
    for client in subscribers(redis):
        redis.client_kill_filter(_id=client["id"])
    # Written while the API has no subscription: heard when it subscribes again.
    redis.eval("redis.call('HSET', KEYS[1], 'progress', ARGV[1])", 1, redis_keys.video_key(video_id), "7")
    wait_until(lambda: follower.videos()[-1]["progress"] == 7, 10, "the missed change")
    wait_until(lambda: len(subscribers(redis)) == 1, 10, "the new subscription")
    httpx.post(f"{base}/v1/videos/{video_id}/cancel")
    follower.wait_closed(5)
    assert follower.events[-1].data["status"] == "cancelled"


def test_many_streams_cost_no_thread_and_no_connection_each(
    live_api: Callable[..., str], redis: Redis
) -> None:
    base = live_api(**NO_HEARTBEAT)
    video_id = create(base)
    host, port = base.removeprefix("http://").split(":")
    threads, connections = threading.active_count(), len(clients(redis))
    request = f"GET /v1/videos/{video_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    streams = [socket.create_connection((host, int(port))) for _ in range(200)]
    try:
        for stream in streams:
            stream.sendall(request)
        for stream in streams:
            stream.settimeout(10)
            assert b"event: video" in _read_until(stream, b"event: video")
        assert threading.active_count() - threads <= 4
        # The async reads' pool and the one subscription, however many streams.
        assert len(clients(redis)) - connections <= ASYNC_REDIS_CONNECTIONS + 2
        assert httpx.post(f"{base}/v1/videos/{video_id}/cancel").status_code == 200
        for stream in streams:
            assert b"event: end" in _read_until(stream, b"event: end")
    finally:
        for stream in streams:
            stream.close()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_status_only_rq_knows_is_read_at_the_next_heartbeat(
    live_api: Callable[..., str], redis: Redis
) -> None:
    """A job RQ gave up on (its worker died) fails with no write to the record: nothing is announced,
    and the heartbeat's read finds it."""
    base = live_api(events_heartbeat_s=0.3)
    video_id = create(base)
    follower = follow(base, video_id)
    Job.fetch(video_id, connection=redis, serializer=redis_keys.SERIALIZER).set_status(JobStatus.FAILED)
    follower.wait_closed(5)
    assert [event.event for event in follower.events][-1] == "end"
    assert follower.events[-1].data["error"]["code"] == "worker_failed"
