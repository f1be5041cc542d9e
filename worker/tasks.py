"""RQ entry points, enqueued by name (``worker.tasks.generate_video``) with JSON arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from service.core.logs import log_context
from service.core.settings import Settings
from service.core.storage import Storage, storage_from_settings
from service.core.video_store import VideoStore
from worker.engine import Engine
from worker.metrics import WorkerMetrics
from worker.video_job import VideoJobRunner


@dataclass
class _Resident:
    engine: Engine
    settings: Settings
    storage: Storage
    metrics: WorkerMetrics | None


_resident: _Resident | None = None


def configure(engine: Engine, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
    """Make the resident model available to jobs; called once by the worker before it starts working."""
    global _resident
    _resident = _Resident(engine, settings, storage_from_settings(settings), metrics)


def generate_video(video_id: str) -> dict[str, Any]:
    if _resident is None:
        raise RuntimeError("generate_video runs inside `wanserve worker`, which loads the model first")
    job = get_current_job()
    if job is None:
        raise RuntimeError("generate_video must run as an RQ job")
    store = VideoStore(job.connection, _resident.settings.queue)
    runner = VideoJobRunner(
        store, _resident.storage, _resident.engine, job.worker_name or "unknown", _resident.metrics
    )
    with log_context(video_id=video_id):
        return runner.run(video_id)
