"""Live workers in Redis: what each serves, and its state (loading, idle, busy, draining).

One registration per worker group (its rank 0): a hash ``wanserve:worker:{name}`` of JSON-encoded fields,
plus the name in the set ``wanserve:workers``. The hash expires ``ttl_s`` after its last write, so a
worker that dies without saying so disappears by itself; every write (a state change or a heartbeat)
rewrites the whole hash and its index entry, so a worker also reappears after Redis lost its data.
Readers drop index entries whose hash has expired.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, cast

from redis import Redis
from redis.exceptions import RedisError

from service.core import redis_keys

log = logging.getLogger("wanserve.workers")

DEFAULT_TTL_S = 60.0
_LAYOUT_KEYS = ("ranks", "ulysses", "cfg")


class WorkerState(StrEnum):
    LOADING = "loading"
    """Started; the model's weights are loading. Takes no jobs yet."""
    IDLE = "idle"
    """Model loaded, waiting for a job."""
    BUSY = "busy"
    """Running a job (``video_id`` says which)."""
    DRAINING = "draining"
    """Asked to stop: finishes the job under way, takes no new one."""

    @property
    def serves(self) -> bool:
        """Whether a worker in this state has its model loaded and may still take jobs."""
        return self in (WorkerState.IDLE, WorkerState.BUSY)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker serves and where it runs."""

    model: str
    """The model's name (what videos ask for)."""
    parallel: Mapping[str, Any] = field(default_factory=lambda: {"ranks": 1, "ulysses": 1, "cfg": 1})
    """The group's layout: ranks, ulysses, cfg; once loaded also attention_backend and compile."""
    device: str = "cpu"
    profile: Mapping[str, Any] | None = None
    """The model's profile (``ModelProfile.to_json()``): sizes, max frames, defaults."""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class WorkerRegistration:
    """One worker's entry in the registry. Thread-safe: a heartbeat thread and the serving loop share it.

    Example::

        registration = WorkerRegistration(redis, name, WorkerInfo(model=..., parallel=..., device=...))
        registration.set_state(WorkerState.LOADING)
        registration.start_heartbeat()
        ...                                   # load the model
        registration.set_state(WorkerState.IDLE)
        registration.set_state(WorkerState.BUSY, video_id)
        registration.set_state(WorkerState.IDLE)
        registration.remove()                 # on the way out (a crash: the TTL removes it)
    """

    def __init__(
        self, redis: Redis, worker_name: str, info: WorkerInfo, ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        if ttl_s < 2:
            raise ValueError("ttl_s must be at least 2 seconds")
        self.redis = redis
        self.name = worker_name
        self.ttl_s = ttl_s
        self._info = info
        self._state = WorkerState.LOADING
        self._video_id: str | None = None
        self._started_at = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._removed = False

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def info(self) -> WorkerInfo:
        return self._info

    def set_state(self, state: WorkerState, video_id: str | None = None) -> bool:
        """Record a new state (and the video a busy worker runs), in Redis now.

        Returns:
            False when Redis could not be written (logged): the state is kept here and the next
            heartbeat writes it. A registry outage never fails a job.
        """
        with self._lock:
            self._state = WorkerState(state)
            self._video_id = video_id
            return self._write_or_log()

    def update_info(self, **changes: Any) -> bool:
        """Change what the worker says it serves (e.g. the device once the model has loaded), now.
        Returns False when Redis could not be written (as :meth:`set_state`)."""
        with self._lock:
            self._info = replace(self._info, **changes)
            return self._write_or_log()

    def heartbeat(self) -> bool:
        """Refresh the registration and its TTL. Returns False when Redis could not be written (logged)."""
        with self._lock:
            return self._write_or_log()

    def start_heartbeat(self, interval_s: float | None = None) -> threading.Thread:
        """Beat every ``interval_s`` (default: a quarter of the TTL) in a daemon thread, until
        :meth:`remove`; a beat that fails (Redis away) is logged and the next one tries again."""
        interval = interval_s if interval_s is not None else self.ttl_s / 4
        if self._beat is None or not self._beat.is_alive():
            self._stop.clear()
            self._beat = threading.Thread(
                target=self._beat_forever, args=(interval,), name="worker-registry", daemon=True
            )
            self._beat.start()
        return self._beat

    def remove(self) -> bool:
        """Stop the heartbeat and delete the registration (a worker that exits cleanly). Returns False
        when Redis could not be written: the registration then expires with its TTL."""
        self._stop.set()
        self._removed = True
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        with self._lock:
            try:
                with self.redis.pipeline() as pipe:
                    pipe.delete(redis_keys.worker_key(self.name))
                    pipe.srem(redis_keys.WORKERS_INDEX_KEY, self.name)
                    pipe.execute()
            except RedisError as exc:
                log.warning("worker %s: could not remove its registration: %s", self.name, exc)
                return False
        return True

    def _beat_forever(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.heartbeat()

    def _fields(self) -> dict[str, Any]:
        info = self._info
        return {
            "name": self.name,
            "state": self._state.value,
            "video_id": self._video_id,
            "started_at": self._started_at,
            "updated_at": time.time(),
            "model": info.model,
            "parallel": dict(info.parallel),
            "device": info.device,
            "profile": dict(info.profile) if info.profile is not None else None,
            "host": info.host,
            "pid": info.pid,
        }

    def _write_or_log(self) -> bool:
        if self._removed:  # gone for good: a late state change must not register it again
            return False
        try:
            self._write()
        except RedisError as exc:
            log.warning(
                "worker %s: registry write failed (%s is kept for the next beat): %s",
                self.name,
                self._state.value,
                exc,
            )
            return False
        return True

    def _write(self) -> None:
        key = redis_keys.worker_key(self.name)
        encoded: dict[Any, Any] = {name: json.dumps(value) for name, value in self._fields().items()}
        with self.redis.pipeline() as pipe:  # MULTI: the hash and its expiry together
            pipe.delete(key)  # fields of an older info do not linger
            pipe.hset(key, mapping=encoded)
            pipe.pexpire(key, int(self.ttl_s * 1000))
            pipe.sadd(redis_keys.WORKERS_INDEX_KEY, self.name)
            pipe.execute()


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every registered worker whose registration has not expired, by name; expired names are dropped
    from the index. Each is a dict of the fields written by :class:`WorkerRegistration`."""
    names = sorted(_text(name) for name in cast(set[Any], redis.smembers(redis_keys.WORKERS_INDEX_KEY)))
    if not names:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(redis_keys.worker_key(name))
        hashes = cast(list[dict[Any, Any]], pipe.execute())
    workers, expired = [], []
    for name, raw in zip(names, hashes, strict=True):
        if raw:
            workers.append({_text(key): json.loads(value) for key, value in raw.items()})
        else:
            expired.append(name)
    if expired:
        redis.eval(_DROP_EXPIRED, 1, redis_keys.WORKERS_INDEX_KEY, redis_keys.worker_key(""), *expired)
    return workers


_DROP_EXPIRED = """
-- KEYS[1]: the index. ARGV[1]: the registration key prefix, ARGV[2..]: names seen expired.
-- Checked again here: a worker that registered again since it was read stays in the index.
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i]) end
end
return 0
"""


def counts_by_state(redis: Redis, workers: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Live workers by state, every state present (0 when none)."""
    workers = live_workers(redis) if workers is None else workers
    counted = Counter(worker.get("state") for worker in workers)
    return {state.value: counted.get(state.value, 0) for state in WorkerState}


def served_models(redis: Redis, workers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What live workers serve, one entry per model, by name::

        {"model": str, "profile": {...} | None, "parallel": [layouts, distinct], "devices": [...],
         "workers": {state: count}}

    A model whose only workers are loading or draining is listed too (``workers`` says so);
    :func:`serves_model` says whether a create for it can expect a worker.
    """
    workers = live_workers(redis) if workers is None else workers
    models: dict[str, dict[str, Any]] = {}
    for worker in workers:
        entry = models.setdefault(
            worker["model"],
            {"model": worker["model"], "profile": None, "parallel": [], "devices": [], "workers": {}},
        )
        if entry["profile"] is None and worker.get("profile") is not None:
            entry["profile"] = worker["profile"]
        layout = {
            key: worker["parallel"][key] for key in ("ranks", "ulysses", "cfg") if key in worker["parallel"]
        }
        if layout not in entry["parallel"]:
            entry["parallel"].append(layout)
        if worker.get("device") not in entry["devices"]:
            entry["devices"].append(worker.get("device"))
        entry["workers"][worker["state"]] = entry["workers"].get(worker["state"], 0) + 1
    return [models[name] for name in sorted(models)]


def serves_model(redis: Redis, model: str, workers: list[dict[str, Any]] | None = None) -> bool:
    """Whether a live worker serves ``model`` or is loading it (a create for it is not ``no_worker``)."""
    workers = live_workers(redis) if workers is None else workers
    return any(worker["model"] == model and worker["state"] != WorkerState.DRAINING for worker in workers)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
