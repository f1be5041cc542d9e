"""RQ entry points, enqueued by name (``worker.tasks.generate_video``) with JSON arguments."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from service.settings import get_settings
from service.storage import LocalStorage
from service.video_store import VideoStore
from worker.engine import WanEngine
from worker.job_runner import VideoJob

_engine: WanEngine | None = None


def set_engine(engine: WanEngine) -> None:
    """Make the resident model available to jobs; called once by the worker before it starts working."""
    global _engine
    _engine = engine


def generate_video(video_id: str) -> dict[str, Any]:
    if _engine is None:
        raise RuntimeError("generate_video runs inside `wanserve worker`, which loads the model first")
    job = get_current_job()
    if job is None:
        raise RuntimeError("generate_video must run as an RQ job")
    settings = get_settings()
    store = VideoStore(job.connection, settings.queue)
    storage = LocalStorage(settings.videos_dir)
    return VideoJob(store, storage, _engine, job.worker_name or "unknown").run(video_id)
