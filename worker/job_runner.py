"""One video job from record to stored MP4: progress, stage timings, cancel, failure."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from service.errors import GenerationCancelled, VideoNotFound
from service.jobs import Stage, VideoStatus
from service.notifications import notify_ended
from service.schemas import GenerationParams
from service.storage import LocalStorage, sha256_of
from service.video_store import VideoStore
from worker.engine import Engine, to_uint8
from worker.video import write_mp4, write_spritesheet, write_thumbnail

log = logging.getLogger("wanserve.worker")

# Progress is an integer 0-100: a little for text encoding, most of it spread over the denoising steps.
_STAGE_PROGRESS = {
    Stage.TEXT_ENCODE: 1,
    Stage.DENOISE: 2,
    Stage.VAE_DECODE: 90,
    Stage.ENCODE: 95,
    Stage.STORE: 98,
}
_DENOISE_SPAN = _STAGE_PROGRESS[Stage.VAE_DECODE] - _STAGE_PROGRESS[Stage.DENOISE]


def denoise_progress(steps_done: int, total: int) -> int:
    return _STAGE_PROGRESS[Stage.DENOISE] + (_DENOISE_SPAN * steps_done) // total


class VideoJob:
    def __init__(self, store: VideoStore, storage: LocalStorage, engine: Engine, worker_name: str) -> None:
        self.store = store
        self.storage = storage
        self.engine = engine
        self.worker_name = worker_name

    def run(self, video_id: str) -> dict[str, Any]:
        """Generate and store one video; the record ends completed, cancelled or failed.

        A failure is recorded on the video and the job returns normally: RQ would otherwise retry it.
        Only a failure of the worker group itself (``retryable``) is raised, so that RQ's ``Retry``
        puts the job back on the queue for the restarted group; the record then says queued again.
        A job that RQ hands out again after it ended (a worker thought dead was not) is skipped.
        """
        try:
            record = self.store.get(video_id)
        except VideoNotFound:
            log.info("%s was deleted before it started", video_id)
            return {"status": "deleted"}
        if VideoStatus(record["status"]).is_terminal:
            log.warning("%s already ended %s; not generating it again", video_id, record["status"])
            return {"status": record["status"]}
        if self.store.cancel_requested(video_id):
            return self._cancelled(video_id, "Cancelled before it started.")

        params = GenerationParams.from_json(record["params"])
        started = time.time()
        timings: dict[str, float] = {"queue_wait_s": round(started - record["created_at"], 4)}
        self.store.update(
            video_id,
            status=VideoStatus.IN_PROGRESS.value,
            started_at=started,
            worker=self.worker_name,
            parallel=self.engine.layout,
            timings=timings,
            attempts=int(record.get("attempts", 0)) + 1,
            progress=0,
        )
        try:
            result = self.engine.generate(
                params,
                on_stage=lambda stage: self._stage(video_id, stage),
                on_step=lambda done, total: self._progress(video_id, denoise_progress(done, total)),
                should_stop=lambda: self.store.cancel_requested(video_id),
            )
            timings.update(result.timings)
            self._stage(video_id, Stage.ENCODE)
            encode_started = time.perf_counter()
            assert result.frames is not None, "the leader always decodes"
            files = self._write_files(video_id, to_uint8(result.frames), params.fps)
            timings["encode_s"] = round(time.perf_counter() - encode_started, 4)
        except GenerationCancelled as exc:
            return self._cancelled(video_id, exc.message)
        except Exception as exc:
            log.exception("%s failed", video_id)
            self.storage.delete(video_id)
            if getattr(exc, "retryable", False):
                self.store.update(
                    video_id, status=VideoStatus.QUEUED.value, stage=Stage.QUEUED.value, progress=0,
                    error={"code": getattr(exc, "code", "retrying"), "message": _describe(exc)},
                )  # fmt: skip
                raise
            self.store.update(
                video_id,
                status=VideoStatus.FAILED.value,
                completed_at=time.time(),
                error=_error(exc),
                timings=timings,
            )
            self._notify(video_id)
            return {"status": "failed"}

        self._stage(video_id, Stage.STORE)
        store_started = time.perf_counter()
        digests = {variant: sha256_of(path) for variant, path in files.items()}
        timings["store_s"] = round(time.perf_counter() - store_started, 4)
        finished = time.time()
        still_wanted = self.store.update(
            video_id,
            status=VideoStatus.COMPLETED.value,
            stage=Stage.DONE.value,
            progress=100,
            completed_at=finished,
            timings=timings,
            files=digests,
            bytes=files["video"].stat().st_size,
            inference_time_s=round(finished - started, 4),
            peak_memory_mb=round(result.peak_memory_mb, 1) if result.peak_memory_mb is not None else None,
            cache=result.cache,
        )
        if not still_wanted:
            log.info("%s was deleted while it ran; removing its files", video_id)
            self.storage.delete(video_id)
            return {"status": "deleted"}
        self._notify(video_id)
        log.info("%s completed in %.2f s %s", video_id, finished - started, timings)
        return {"status": "completed", "timings": timings}

    def _notify(self, video_id: str) -> None:
        try:
            record = self.store.get(video_id)
        except VideoNotFound:  # deleted meanwhile: nobody to tell
            return
        notify_ended(self.store.redis, record)

    def _progress(self, video_id: str, progress: int) -> None:
        self.store.update(video_id, progress=progress)

    def _stage(self, video_id: str, stage: Stage) -> None:
        self.store.update(video_id, stage=stage.value, progress=_STAGE_PROGRESS.get(stage, 0))

    def _write_files(self, video_id: str, frames: np.ndarray, fps: int) -> dict[str, Path]:
        writers: dict[str, Callable[[Path], None]] = {
            "video": lambda path: write_mp4(frames, path, fps),
            "thumbnail": lambda path: write_thumbnail(frames, path),
            "spritesheet": lambda path: write_spritesheet(frames, path),
        }
        return {variant: self.storage.write(video_id, variant, write) for variant, write in writers.items()}

    def _cancelled(self, video_id: str, message: str) -> dict[str, Any]:
        log.info("%s cancelled: %s", video_id, message)
        self.storage.delete(video_id)
        self.store.update(
            video_id,
            status=VideoStatus.CANCELLED.value,
            completed_at=time.time(),
            error={"code": "cancelled", "message": message},
        )
        self.store.clear_cancel(video_id)
        self._notify(video_id)
        return {"status": "cancelled"}


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, JobTimeoutException):
        job = get_current_job()
        limit = f"its {job.timeout} s" if job is not None and job.timeout else "its"
        return {
            "code": "job_timeout",
            "message": f"The job ran longer than {limit} limit (WANSERVE_JOB_TIMEOUT_S).",
        }
    return {"code": getattr(exc, "code", "generation_failed"), "message": _describe(exc)}


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if not hasattr(exc, "message") else message
