"""Status reads and list pages served from the API's memory until Redis announces a change: never a stale
answer after a write is announced, nothing kept while the announcements cannot be heard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from redis import Redis
from rq.job import Job, JobStatus

from service.core import redis_keys
from service.core.settings import Settings
from service.core.video_store import VideoStore
from tests.processes import wait_until
from tests.redis_clients import subscribers

# Long enough that a test which passes saw an announcement, not the end of an answer's life.
KEPT = {"read_cache_s": 60.0}


def create(base: str, headers: dict[str, str] | None = None) -> str:
    body = {"prompt": "a red fox", "seconds": 1, "size": "64x64"}
    response = httpx.post(f"{base}/v1/videos", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def reads_of_redis(redis: Redis) -> int:
    """How many read scripts Redis has run (each status read or list page that was not kept)."""
    stats = redis.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def cached(base: str, redis: Redis, path: str) -> bool:
    """Whether ``path`` is answered from memory now: read twice, Redis ran no script for the second."""
    httpx.get(base + path)
    before = reads_of_redis(redis)
    httpx.get(base + path)
    return reads_of_redis(redis) == before


def test_polls_of_an_unchanged_video_cost_redis_nothing(live_api: Callable[..., str], redis: Redis) -> None:
    base = live_api(**KEPT)
    video_id = create(base)
    wait_until(lambda: cached(base, redis, f"/v1/videos/{video_id}"), 5, "the status read kept")
    before = reads_of_redis(redis)
    answers = [httpx.get(f"{base}/v1/videos/{video_id}") for _ in range(50)]
    answers += [httpx.get(f"{base}/v1/videos?limit=5") for _ in range(50)]
    assert reads_of_redis(redis) - before <= 1
    assert {a.status_code for a in answers} == {200}
    assert answers[0].headers["openai-poll-after-ms"] == "1000"
    assert answers[-1].json()["data"][0]["id"] == video_id


def test_an_announced_write_is_read_at_once(
    live_api: Callable[..., str], redis: Redis, settings: Settings
) -> None:
    base = live_api(**KEPT)
    video_id = create(base)
    wait_until(lambda: cached(base, redis, f"/v1/videos/{video_id}"), 5, "the status read kept")
    wait_until(lambda: cached(base, redis, "/v1/videos"), 5, "the list kept")
    # What a worker writes, from another process's connection.
    VideoStore(redis, settings.queue).update(video_id, progress=42, stage="denoise")

    def shows_it() -> bool:
        video = httpx.get(f"{base}/v1/videos/{video_id}").json()
        listed = httpx.get(f"{base}/v1/videos").json()["data"][0]
        return video["progress"] == listed["progress"] == 42

    wait_until(shows_it, 0.5, "the new progress (announced, so well before the answers' 60 s)")


def test_this_process_reads_its_own_writes(live_api: Callable[..., str], redis: Redis) -> None:
    base = live_api(**KEPT)
    first = create(base)
    wait_until(lambda: cached(base, redis, "/v1/videos"), 5, "the list kept")
    second = create(base)
    assert [v["id"] for v in httpx.get(f"{base}/v1/videos").json()["data"]] == [second, first]
    wait_until(lambda: cached(base, redis, f"/v1/videos/{first}"), 5, "the status read kept")
    assert httpx.post(f"{base}/v1/videos/{first}/cancel").status_code == 200
    assert httpx.get(f"{base}/v1/videos/{first}").json()["status"] == "cancelled"
    assert httpx.delete(f"{base}/v1/videos/{first}").status_code == 200
    assert httpx.get(f"{base}/v1/videos/{first}").status_code == 404
    assert [v["id"] for v in httpx.get(f"{base}/v1/videos").json()["data"]] == [second]


def test_what_only_rq_knows_is_read_once_an_answer_is_older_than_its_limit(
    live_api: Callable[..., str], redis: Redis
) -> None:
    base = live_api(read_cache_s=0.3)
    video_id = create(base)
    wait_until(lambda: cached(base, redis, f"/v1/videos/{video_id}"), 5, "the status read kept")
    Job.fetch(video_id, connection=redis, serializer=redis_keys.SERIALIZER).set_status(JobStatus.FAILED)
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["status"] == "failed", 2, "the failure"
    )


def test_another_owners_kept_video_is_still_unknown_to_them(live_api: Callable[..., str]) -> None:
    base = live_api(api_keys="alpha,beta", **KEPT)
    alpha, beta = {"Authorization": "Bearer alpha"}, {"Authorization": "Bearer beta"}
    video_id = create(base, alpha)
    for _ in range(3):
        assert httpx.get(f"{base}/v1/videos/{video_id}", headers=alpha).status_code == 200
        assert httpx.get(f"{base}/v1/videos/{video_id}", headers=beta).status_code == 404
        assert httpx.get(f"{base}/v1/videos", headers=beta).json()["data"] == []


def test_nothing_is_kept_while_the_announcements_cannot_be_heard(
    live_api: Callable[..., str], redis: Redis
) -> None:
    base = live_api(**KEPT)
    video_id = create(base)
    wait_until(lambda: cached(base, redis, f"/v1/videos/{video_id}"), 5, "the status read kept")
    [subscriber] = subscribers(redis)
    redis.client_kill_filter(_id=subscriber["id"])
    # Written without an announcement: only a read of Redis can see it.
    redis.hset(redis_keys.video_key(video_id), "progress", "7")
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["progress"] == 7, 3, "a read of Redis"
    )


def test_requests_that_ask_together_share_one_read(
    live_api: Callable[..., str], redis: Redis, settings: Settings
) -> None:
    base = live_api(**KEPT)
    video_id = create(base)
    wait_until(lambda: cached(base, redis, f"/v1/videos/{video_id}"), 5, "the status read kept")
    VideoStore(redis, settings.queue).update(video_id, progress=42)
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["progress"] == 42, 1, "the new progress"
    )
    VideoStore(redis, settings.queue).update(video_id, progress=43)
    time.sleep(0.2)  # the announcement is heard: the kept answer is gone

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*[client.get(f"{base}/v1/videos/{video_id}") for _ in range(50)])

    before = reads_of_redis(redis)
    answers = asyncio.run(together())
    assert {answer.json()["progress"] for answer in answers} == {43}
    assert reads_of_redis(redis) - before <= 2, "each request that found nothing kept read Redis itself"
