"""``wanserve worker``: load the model once, publish its profile, then take jobs from RQ until stopped."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from pathlib import Path

from redis import Redis

from service import jobs
from service.settings import Settings
from worker import tasks
from worker.engine import Engine, WanEngine
from worker.parallel import ParallelRuntime
from worker.rq_worker import WanWorker
from worker.tiny_model import ensure_tiny_model

log = logging.getLogger("wanserve.worker")


def model_folder(settings: Settings) -> Path:
    """``WANSERVE_MODEL`` when set, else the tiny random-weight model (generated on first use)."""
    if settings.model:
        folder = Path(settings.model)
        if not folder.is_dir():
            raise SystemExit(
                f"WANSERVE_MODEL={settings.model} is not a folder (weights are never downloaded)"
            )
        return folder
    return ensure_tiny_model(settings.models_dir)


def load_engine(settings: Settings, parallel: ParallelRuntime | None = None) -> WanEngine:
    return WanEngine.load(
        model_folder(settings),
        device=settings.device,
        dtype=settings.dtype,
        model_name=settings.model_name,
        parallel=parallel,
    )


def unique_worker_name() -> str:
    # Unique names: a restarted worker must not collide with its dead predecessor's lingering key.
    return f"wanserve-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def make_worker(settings: Settings, engine: Engine, redis: Redis, name: str | None = None) -> WanWorker:
    """An RQ worker over the resident engine, its model's profile published for the API."""
    tasks.configure(engine, settings)
    redis.hset(jobs.MODEL_REGISTRY_KEY, engine.profile.name, json.dumps(engine.profile.to_json()))
    worker = WanWorker(
        [settings.queue], connection=redis, name=name or unique_worker_name(), serializer=jobs.SERIALIZER
    )
    worker.heartbeat_ttl_s = settings.heartbeat_ttl_s
    worker.reap_interval_s = settings.reap_interval_s
    return worker


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    if not settings.redis_url:
        raise SystemExit("WANSERVE_REDIS_URL is not set (use `wanserve dev` for an embedded Redis)")
    engine = load_engine(settings)
    worker = make_worker(settings, engine, Redis.from_url(settings.redis_url))
    log.info("worker %s ready: model %s, queue %s", worker.name, engine.profile.name, settings.queue)
    level = logging.getLevelName(log.getEffectiveLevel())
    worker.work(burst=burst, logging_level=level, with_scheduler=False)
