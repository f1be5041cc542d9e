"""The API's view of the fleet: workers listed (with auth), models from live workers, no_worker stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from service.core.model_profile import TINY_PROFILE
from service.core.worker_registry import WorkerInfo, WorkerRegistration, WorkerState

JOB = {"prompt": "a red square", "size": "64x64", "seconds": 1}


def register(
    redis: Redis, name: str, state: WorkerState, model: str = TINY_PROFILE.name
) -> WorkerRegistration:
    info = WorkerInfo(
        model=model, parallel={"ranks": 2, "ulysses": 2, "cfg": 1}, profile=TINY_PROFILE.to_json()
    )
    registration = WorkerRegistration(redis, name, info, ttl_s=30)
    registration.set_state(state)
    return registration


def test_workers_are_listed_to_key_holders_only(make_client: Callable[..., Any], redis: Redis) -> None:
    register(redis, "gpu-node-7", WorkerState.BUSY)
    client = make_client(api_keys="sk-fleet")
    assert client.get("/v1/workers").status_code == 401
    listed = client.get("/v1/workers", headers={"Authorization": "Bearer sk-fleet"}).json()["data"]
    assert [(w["name"], w["state"], w["parallel"]["ulysses"]) for w in listed] == [("gpu-node-7", "busy", 2)]
    ready = client.get("/readyz").json()
    assert ready["workers"]["busy"] == 1 and "gpu-node-7" not in str(ready), "no names for anonymous probes"


def test_models_are_what_live_workers_serve(make_client: Callable[..., Any], redis: Redis) -> None:
    register(redis, "w1", WorkerState.IDLE)
    register(redis, "w2", WorkerState.LOADING)
    models = make_client().get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [TINY_PROFILE.name]
    assert models[0]["workers"] == {"idle": 1, "loading": 1}
    assert models[0]["parallel"] == [{"ranks": 2, "ulysses": 2, "cfg": 1}]
    assert "64x64" in models[0]["sizes"]


def test_a_queued_video_says_no_worker_until_one_registers(
    make_client: Callable[..., Any], redis: Redis
) -> None:
    client = make_client()
    video_id = client.post("/v1/videos", json=JOB).json()["id"]
    assert client.get(f"/v1/videos/{video_id}").json()["stage"] == "no_worker"
    register(redis, "late", WorkerState.LOADING)
    time.sleep(1.1)  # the API reads the registry at most once a second
    assert client.get(f"/v1/videos/{video_id}").json()["stage"] == "queued"
    listed = client.get("/v1/videos").json()["data"]
    assert listed[0]["stage"] == "queued"
