"""The worker registry against a real Redis: states, heartbeat expiry, counts, served models."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from service.core import redis_keys
from service.core.lifecycle import VideoStatus
from service.core.model_profile import TINY_PROFILE
from service.core.video_counts import COUNTED_FIELD, count_ended, count_ended_once, ended_counts
from service.core.worker_registry import (
    WorkerInfo,
    WorkerRegistration,
    WorkerState,
    counts_by_state,
    live_workers,
    served_models,
    serves_model,
)

VIDEO_ID = "video_" + "1" * 32


def info(model: str = TINY_PROFILE.name, ulysses: int = 1, cfg: int = 1) -> WorkerInfo:
    return WorkerInfo(
        model=model,
        parallel={"ranks": ulysses * cfg, "ulysses": ulysses, "cfg": cfg},
        device="cpu",
        profile=TINY_PROFILE.to_json(),
    )


def only_worker(redis: Redis) -> dict:
    (worker,) = live_workers(redis)
    return worker


def test_a_worker_moves_through_its_states(redis: Redis) -> None:
    registration = WorkerRegistration(redis, "group-a", info())
    assert live_workers(redis) == []
    assert registration.set_state(WorkerState.LOADING)
    worker = only_worker(redis)
    assert {key: worker[key] for key in ("name", "state", "model", "device", "video_id")} == {
        "name": "group-a",
        "state": "loading",
        "model": TINY_PROFILE.name,
        "device": "cpu",
        "video_id": None,
    }
    assert worker["parallel"] == {"ranks": 1, "ulysses": 1, "cfg": 1}
    assert worker["profile"]["max_frames"] == TINY_PROFILE.max_frames
    assert worker["host"] and worker["pid"] > 0 and worker["started_at"] <= worker["updated_at"]

    registration.set_state(WorkerState.IDLE)
    assert only_worker(redis)["state"] == "idle"
    registration.set_state(WorkerState.BUSY, VIDEO_ID)
    assert (only_worker(redis)["state"], only_worker(redis)["video_id"]) == ("busy", VIDEO_ID)
    registration.set_state(WorkerState.IDLE)
    assert (only_worker(redis)["state"], only_worker(redis)["video_id"]) == ("idle", None)
    registration.set_state(WorkerState.DRAINING)
    assert only_worker(redis)["state"] == "draining"

    assert registration.remove()
    assert live_workers(redis) == []
    assert not redis.exists(redis_keys.WORKERS_INDEX_KEY)
    # Once removed, a late state change does not register it again.
    assert not registration.set_state(WorkerState.IDLE)
    assert live_workers(redis) == []


def test_a_worker_that_stops_beating_disappears_by_itself(redis: Redis) -> None:
    alive = WorkerRegistration(redis, "alive", info(), ttl_s=2)
    dead = WorkerRegistration(redis, "dead", info(), ttl_s=2)
    alive.set_state(WorkerState.IDLE)
    dead.set_state(WorkerState.BUSY, VIDEO_ID)
    alive.start_heartbeat(interval_s=0.3)
    assert [worker["name"] for worker in live_workers(redis)] == ["alive", "dead"]
    assert 0 < redis.pttl(redis_keys.worker_key("dead")) <= 2000

    deadline = time.monotonic() + 10
    while len(live_workers(redis)) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [worker["name"] for worker in live_workers(redis)] == ["alive"]
    # The reader dropped the dead one from the index too.
    assert redis.smembers(redis_keys.WORKERS_INDEX_KEY) == {b"alive"}
    alive.remove()


def test_a_heartbeat_registers_again_after_redis_lost_the_entry(redis: Redis) -> None:
    registration = WorkerRegistration(redis, "survivor", info())
    registration.set_state(WorkerState.BUSY, VIDEO_ID)
    redis.flushdb()  # a Redis restarted without its data
    assert live_workers(redis) == []
    assert registration.heartbeat()
    assert (only_worker(redis)["state"], only_worker(redis)["video_id"]) == ("busy", VIDEO_ID)


def test_counts_by_state_name_every_state(redis: Redis) -> None:
    assert counts_by_state(redis) == {"loading": 0, "idle": 0, "busy": 0, "draining": 0}
    for name, state in (("a", "idle"), ("b", "idle"), ("c", "busy"), ("d", "loading")):
        WorkerRegistration(redis, name, info()).set_state(WorkerState(state))
    assert counts_by_state(redis) == {"loading": 1, "idle": 2, "busy": 1, "draining": 0}


def test_served_models_list_what_live_workers_serve(redis: Redis) -> None:
    WorkerRegistration(redis, "a", info()).set_state(WorkerState.IDLE)
    WorkerRegistration(redis, "b", info(ulysses=2)).set_state(WorkerState.BUSY, VIDEO_ID)
    WorkerRegistration(redis, "c", info(ulysses=2)).set_state(WorkerState.LOADING)
    big_info = WorkerInfo(model="wan2.1-t2v-14b", parallel={"ranks": 2, "ulysses": 1, "cfg": 2}, device="npu")
    WorkerRegistration(redis, "d", big_info).set_state(WorkerState.DRAINING)

    big, tiny = served_models(redis)  # by name
    assert tiny["model"] == TINY_PROFILE.name and tiny["profile"]["sizes"] == list(TINY_PROFILE.sizes)
    assert tiny["parallel"] == [{"ranks": 1, "ulysses": 1, "cfg": 1}, {"ranks": 2, "ulysses": 2, "cfg": 1}]
    assert tiny["workers"] == {"idle": 1, "busy": 1, "loading": 1} and tiny["devices"] == ["cpu"]
    assert big["model"] == "wan2.1-t2v-14b" and big["workers"] == {"draining": 1}
    assert (big["profile"], big["parallel"], big["devices"]) == (
        None,
        [{"ranks": 2, "ulysses": 1, "cfg": 2}],
        ["npu"],
    )

    assert serves_model(redis, TINY_PROFILE.name)
    assert not serves_model(redis, "wan2.1-t2v-14b")  # only draining: no_worker
    assert not serves_model(redis, "unknown")


def test_update_info_rewrites_what_the_worker_serves(redis: Redis) -> None:
    registration = WorkerRegistration(redis, "a", info())
    registration.set_state(WorkerState.LOADING)
    registration.update_info(device="cuda")
    assert only_worker(redis)["device"] == "cuda" and registration.info.device == "cuda"


def test_a_registry_outage_never_raises(redis_url: str) -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    registration = WorkerRegistration(unreachable, "lonely", info())
    assert not registration.set_state(WorkerState.IDLE)
    assert registration.state is WorkerState.IDLE  # kept for the next beat
    assert not registration.heartbeat()
    assert not registration.remove()


def test_ended_videos_are_counted_once(redis: Redis) -> None:
    assert ended_counts(redis) == {"completed": 0, "failed": 0, "cancelled": 0}
    key = redis_keys.video_key(VIDEO_ID)
    redis.hset(key, mapping={"id": '"' + VIDEO_ID + '"', "status": '"completed"'})
    assert count_ended_once(redis, VIDEO_ID, VideoStatus.COMPLETED)
    assert not count_ended_once(redis, VIDEO_ID, VideoStatus.FAILED)  # a second ending: not counted
    assert redis.hget(key, COUNTED_FIELD) == b"true"
    other = "video_" + "2" * 32
    assert not count_ended_once(redis, other, "failed")  # no record: nothing to count
    assert not redis.exists(redis_keys.video_key(other))  # and none made
    count_ended(redis, "cancelled")
    assert ended_counts(redis) == {"completed": 1, "failed": 0, "cancelled": 1}
    with pytest.raises(ValueError, match="not a final status"):
        count_ended_once(redis, VIDEO_ID, "queued")
