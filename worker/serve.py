"""``wanserve worker``: load the model once, publish its profile, then take jobs from RQ until stopped."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from service.core import redis_keys
from service.core.logs import log_context
from service.core.model_profile import RANDOM_MODEL_ALIAS, profile_for_folder
from service.core.settings import Settings, SettingsError
from worker import tasks
from worker.engine import Engine, WanEngine
from worker.parallel import ParallelLayout, ParallelRuntime
from worker.presence import WorkerPresence
from worker.rq_worker import WanWorker
from worker.tiny_model import SHAPES_MODEL_DIR, ensure_tiny_model

log = logging.getLogger("wanserve.worker")


def model_folder(settings: Settings) -> Path:
    """``WANSERVE_MODEL``: a folder, or ``tiny-random`` (generated on first use); unset, the shipped
    shapes model."""
    if settings.model == RANDOM_MODEL_ALIAS:
        return ensure_tiny_model(settings.models_dir)
    if settings.model:
        folder = Path(settings.model)
        if not folder.is_dir():
            raise SettingsError(
                f"WANSERVE_MODEL={settings.model} is not a folder (weights are never downloaded)"
            )
        return folder
    return SHAPES_MODEL_DIR


def load_engine(settings: Settings, parallel: ParallelRuntime | None = None) -> WanEngine:
    return WanEngine.load(
        model_folder(settings),
        device=settings.device,
        dtype=settings.dtype,
        model_name=settings.model_name,
        parallel=parallel,
        vae_tiling=settings.vae_tiling,
        vae_parallel=settings.vae_parallel,
        text_encoder_offload=settings.text_encoder_offload,
        npu_ops=settings.npu_ops,
        attention_backend=settings.attention_backend,
        compile=settings.compile,
    )


def unique_worker_name() -> str:
    # Unique names: a restarted worker must not collide with its dead predecessor's lingering key.
    return f"wanserve-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def announce_presence(settings: Settings, redis: Redis, name: str, layout: ParallelLayout) -> WorkerPresence:
    """Register the worker as loading (with its probes up), from the model's profile, before weights load."""
    model = profile_for_folder(model_folder(settings), settings.model_name).name
    parallel = {"ranks": layout.ranks, "ulysses": layout.ulysses, "cfg": layout.cfg}
    return WorkerPresence(settings, redis, name, model, parallel).announce()


def make_worker(
    settings: Settings,
    engine: Engine,
    redis: Redis,
    name: str | None = None,
    presence: WorkerPresence | None = None,
) -> WanWorker:
    """An RQ worker over the resident engine, its model's profile published for the API."""
    tasks.configure(engine, settings, presence.metrics if presence is not None else None)
    redis.hset(redis_keys.MODEL_REGISTRY_KEY, engine.profile.name, json.dumps(engine.profile.to_json()))
    worker = WanWorker(
        [settings.queue],
        connection=redis,
        name=name or unique_worker_name(),
        serializer=redis_keys.SERIALIZER,
    )
    worker.heartbeat_ttl_s = settings.heartbeat_ttl_s
    worker.reap_interval_s = settings.reap_interval_s
    worker.result_ttl_s = settings.result_ttl_s
    worker.presence = presence
    return worker


def serve(
    settings: Settings,
    engine: Engine,
    redis: Redis,
    *,
    name: str | None = None,
    burst: bool = False,
    stop_when: Callable[[], bool] | None = None,
    presence: WorkerPresence | None = None,
) -> None:
    """Take jobs until asked to stop (a signal, ``burst`` done, or ``stop_when``), riding out Redis outages.

    RQ's work loop ends on a lost Redis connection; the worker then waits for Redis and registers again
    under a fresh name (its old registration may linger in a Redis that kept its data).
    """
    base = name or unique_worker_name()
    level = logging.getLevelName(log.getEffectiveLevel())
    for incarnation in itertools.count():
        try:
            worker = make_worker(
                settings,
                engine,
                redis,
                name=base if incarnation == 0 else f"{base}-c{incarnation}",
                presence=presence,
            )
            if stop_when is not None:
                worker.stop_when = stop_when
            log.info("worker %s ready: model %s, queue %s", worker.name, engine.profile.name, settings.queue)
            with log_context(worker=base):
                worker.work(burst=burst, logging_level=level, with_scheduler=False)
            if burst or worker.stop_requested:
                return
        except RedisError as exc:
            log.warning("Redis unavailable: %s", exc)
        _wait_for_redis(redis)


def _wait_for_redis(redis: Redis, max_delay_s: float = 10.0) -> None:
    delay = 0.5
    while True:
        try:
            redis.ping()
            return
        except RedisError:
            log.warning("waiting for Redis (next try in %.1f s)", delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    redis = Redis.from_url(settings.require_redis_url())
    name = settings.worker_name or unique_worker_name()
    presence = announce_presence(settings, redis, name, ParallelLayout())
    try:
        engine = load_engine(settings)
        presence.loaded(engine.profile, engine.layout)
        serve(settings, engine, redis, name=name, burst=burst, presence=presence)
    finally:
        presence.close()
