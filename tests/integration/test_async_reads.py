"""The reads clients poll (one Lua round trip on redis.asyncio) against the sync reads that go through
rq's own ``Job.fetch``: the same public object in every state a record and its RQ job can be in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job

from service.api.app import create_app
from service.core import redis_keys
from service.core.errors import InvalidRequest, VideoNotFound
from service.core.lifecycle import VideoStatus
from service.core.settings import Settings
from service.core.video_object import video_object
from service.core.video_store import VideoStore

BODY = {"prompt": "a red fox", "seconds": 1, "size": "64x64"}
TTL = 3600


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"result_ttl_s": TTL}))) as test_client:
        yield test_client


@pytest.fixture
def store(redis: Redis, settings: Settings) -> VideoStore:
    return VideoStore(redis, settings.queue)


def create(client: TestClient, n: int = 1) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.post("/v1/videos", json=BODY)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def sync_view(store: VideoStore, video_id: str, owner: str | None = None) -> dict[str, Any]:
    record = store.get(video_id, owner)
    status, error = store.public_status(record)
    position = store.queue_position(video_id) if status == VideoStatus.QUEUED else None
    return video_object(record, status, error, position, TTL)


def async_view(store: VideoStore, redis_url: str, video_id: str, owner: str | None = None) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with AsyncRedis.from_url(redis_url) as redis:
            video = await store.read_async(redis, video_id, owner)
        return video_object(video.record, video.status, video.error, video.queue_position, TTL)

    return asyncio.run(read())


def async_list(store: VideoStore, redis_url: str, **page: Any) -> tuple[list[dict[str, Any]], bool]:
    async def read() -> tuple[list[dict[str, Any]], bool]:
        async with AsyncRedis.from_url(redis_url) as redis:
            videos, has_more = await store.list_async(redis, **page)
        return [video_object(v.record, v.status, v.error, v.queue_position, TTL) for v in videos], has_more

    return asyncio.run(read())


def job_hash(video_id: str) -> str:
    return Job.key_for(video_id)


STATES: dict[str, Callable[[VideoStore, Redis, str], None]] = {
    "queued": lambda store, redis, vid: None,
    "running": lambda store, redis, vid: (
        store.update(vid, status="in_progress", stage="denoise", progress=40, started_at=1.0),
        redis.hset(job_hash(vid), "status", "started"),
    ),
    "completed": lambda store, redis, vid: store.update(
        vid, status="completed", stage="done", progress=100, completed_at=2.0, files={"video": "ab"}
    ),
    "failed in the record": lambda store, redis, vid: store.update(
        vid, status="failed", completed_at=2.0, error={"code": "oom", "message": "out of memory"}
    ),
    "job hash gone": lambda store, redis, vid: redis.delete(job_hash(vid)),
    "job hash without data": lambda store, redis, vid: redis.hdel(job_hash(vid), "data"),
    "job hash without status": lambda store, redis, vid: redis.hdel(job_hash(vid), "status"),
    "job failed, record silent": lambda store, redis, vid: (
        store.update(vid, status="in_progress"),
        redis.hset(job_hash(vid), "status", "failed"),
    ),
    "job failed, record says why": lambda store, redis, vid: (
        store.update(vid, status="in_progress", error={"code": "worker_lost", "message": "gone"}),
        redis.hset(job_hash(vid), "status", "failed"),
    ),
    "job stopped": lambda store, redis, vid: redis.hset(job_hash(vid), "status", "stopped"),
    "job canceled, record queued": lambda store, redis, vid: redis.hset(job_hash(vid), "status", "canceled"),
    "cancelled": lambda store, redis, vid: store.cancel(vid),
}


@pytest.mark.parametrize("state", list(STATES))
def test_a_status_read_is_the_sync_read_in_every_state(
    client: TestClient, store: VideoStore, redis: Redis, redis_url: str, state: str
) -> None:
    ids = create(client, 3)
    video_id = ids[1]  # second in the queue: its position is 1 while queued
    STATES[state](store, redis, video_id)
    expected = sync_view(store, video_id)
    assert async_view(store, redis_url, video_id) == expected
    assert async_view(store, redis_url, video_id, owner="public") == expected
    response = client.get(f"/v1/videos/{video_id}")
    assert response.status_code == 200, response.text
    # Over HTTP a queued video's stage also says whether a worker serves its model (none runs here).
    assert without_stage(response.json()) == without_stage(expected)


def without_stage(view: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in view.items() if key != "stage"}


def test_unknown_ids_and_other_owners_are_not_found(
    client: TestClient, store: VideoStore, redis_url: str
) -> None:
    (video_id,) = create(client)
    for vid, owner in [
        (video_id, "key_someone_else"),
        ("video_" + "0" * 32, None),
        ("not-an-id", None),
        (video_id + "x", None),
    ]:
        with pytest.raises(VideoNotFound):
            sync_view(store, vid, owner)
        with pytest.raises(VideoNotFound):
            async_view(store, redis_url, vid, owner)


def test_a_page_of_the_list_is_the_sync_reads_of_its_ids(
    client: TestClient, store: VideoStore, redis: Redis, redis_url: str
) -> None:
    ids = create(client, 7)
    STATES["running"](store, redis, ids[2])
    STATES["completed"](store, redis, ids[3])
    STATES["job hash gone"](store, redis, ids[4])
    newest_first = ids[::-1]

    page, has_more = async_list(store, redis_url, owner="public", after=None, limit=3, order="desc")
    assert page == [sync_view(store, vid) for vid in newest_first[:3]] and has_more
    page, has_more = async_list(
        store, redis_url, owner="public", after=newest_first[2], limit=3, order="desc"
    )
    assert page == [sync_view(store, vid) for vid in newest_first[3:6]] and has_more
    page, has_more = async_list(
        store, redis_url, owner="public", after=newest_first[5], limit=3, order="desc"
    )
    assert page == [sync_view(store, newest_first[6])] and not has_more
    page, has_more = async_list(store, redis_url, owner="public", after=None, limit=7, order="asc")
    assert page == [sync_view(store, vid) for vid in ids] and not has_more
    assert async_list(store, redis_url, owner="key_someone_else", after=None, limit=20, order="desc") == (
        [],
        False,
    )

    with pytest.raises(InvalidRequest) as refused:
        async_list(store, redis_url, owner="public", after="video_" + "0" * 32, limit=3, order="desc")
    assert refused.value.param == "after"

    # An index entry whose record is gone (deleted between two reads, before the expiry cleaner) is
    # skipped, and still counts for has_more, as before.
    redis.delete(redis_keys.video_key(ids[0]))
    page, has_more = async_list(store, redis_url, owner="public", after=None, limit=7, order="asc")
    assert [video["id"] for video in page] == ids[1:] and not has_more
