"""A worker's registry entry once its model has loaded: the engine's layout (attention backend, compile
mode) joins what it announced, and the models listing still groups workers by ranks, ulysses and cfg."""

from __future__ import annotations

from redis import Redis

from service.core.model_profile import TINY_PROFILE
from service.core.settings import Settings
from service.core.worker_registry import live_workers, served_models
from worker.presence import WorkerPresence


def test_the_loaded_worker_reports_its_attention_backend_and_compile_mode(
    settings: Settings, redis: Redis
) -> None:
    announced = {"ranks": 2, "ulysses": 2, "cfg": 1}
    presence = WorkerPresence(settings, redis, "group-a", TINY_PROFILE.name, announced)
    layout = {**announced, "device": "cuda", "attention_backend": "_native_cudnn", "compile": "blocks"}
    try:
        presence.loaded(TINY_PROFILE, layout)
        (worker,) = live_workers(redis)
        assert (worker["state"], worker["device"]) == ("idle", "cuda")
        assert worker["parallel"] == {
            "ranks": 2,
            "ulysses": 2,
            "cfg": 1,
            "attention_backend": "_native_cudnn",
            "compile": "blocks",
        }
        (model,) = served_models(redis)
        assert model["parallel"] == [announced]
    finally:
        presence.close()
