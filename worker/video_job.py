"""One video job from record to stored MP4: progress, stage timings, cancel, time limit, failure.

The job's time limit (``WANSERVE_JOB_TIMEOUT_S``, the timeout RQ holds for the job) is enforced
cooperatively: it is a deadline the engine checks at step boundaries, where every rank of a group stops
together. RQ's own timeout is a SIGALRM that raises wherever the leader happens to be, in the middle of
a collective included, which would leave the group out of step; it is moved BACKSTOP_GRACE_S later, for
a job that stops answering altogether.

A failed job tells the client a classified error (a code and a fixed sentence, or our own short message
for errors meant for clients), never the exception's text: that, with its traceback, goes to the log.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rq import Queue, get_current_job
from rq.timeouts import JobTimeoutException

from service.core.errors import GenerationCancelled, InvalidRequest, StorageError, VideoNotFound
from service.core.lifecycle import Stage, VideoStatus
from service.core.schemas import GenerationParams
from service.core.storage import VARIANT_FILES, Storage, StoredFile
from service.core.video_store import VideoStore
from service.core.webhook_queue import video_ended
from worker.engine import Engine, JobHooks
from worker.errors import GenerationAborted, GroupFailed
from worker.metrics import StepClock, WorkerMetrics, skipped_ratio
from worker.video import to_uint8, write_mp4, write_spritesheet, write_thumbnail

log = logging.getLogger("wanserve.worker")

BACKSTOP_GRACE_S = 300
"""RQ's SIGALRM rings this long after the job's cooperative deadline: time for the step under way to end
and for the decode, encode and store that follow the last step."""

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


class VideoJobRunner:
    """Runs video jobs on the resident engine: the video's record in ``store``, its files in ``storage``."""

    def __init__(
        self,
        store: VideoStore,
        storage: Storage,
        engine: Engine,
        worker_name: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.engine = engine
        self.worker_name = worker_name
        self.metrics = metrics

    def run(self, video_id: str) -> dict[str, Any]:
        """Generate and store one video; the record ends completed, cancelled or failed.

        A failure is recorded on the video and the job returns normally: RQ would otherwise retry it.
        Only a failure of the worker group itself (``GroupFailed``) is raised, so that RQ's ``Retry``
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
        limit_s = _cooperative_time_limit_s()
        deadline = time.monotonic() + limit_s if limit_s is not None else None
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
        clock = StepClock()

        def on_stage(stage: Stage) -> None:
            if stage == Stage.DENOISE:
                clock.start()
            self._stage(video_id, stage)

        def on_step(done: int, total: int) -> None:
            clock.lap()
            self._progress(video_id, denoise_progress(done, total))

        try:
            hooks = JobHooks(
                on_stage=on_stage,
                on_step=on_step,
                should_stop=lambda: self.store.cancel_requested(video_id),
                deadline=deadline,
            )
            result = self.engine.generate(params, hooks)
            timings.update(result.timings)
            assert result.frames is not None, "the leader always decodes"
            stored = self._store_files(video_id, to_uint8(result.frames), params.fps, timings)
        except GenerationCancelled as exc:
            return self._cancelled(video_id, exc.message, timings)
        except Exception as exc:
            log.exception("%s failed", video_id)  # the whole story, for us; the client gets a summary
            self.storage.delete(video_id)
            if isinstance(exc, GroupFailed):
                self.store.update(
                    video_id, status=VideoStatus.QUEUED.value, stage=Stage.QUEUED.value, progress=0,
                    error=client_error(exc, limit_s),
                )  # fmt: skip
                self._record("retried", timings)
                raise
            self.store.update(
                video_id,
                status=VideoStatus.FAILED.value,
                completed_at=time.time(),
                error=client_error(exc, limit_s),
                timings=timings,
            )
            self._notify(video_id)
            self._record("failed", timings)
            return {"status": "failed"}

        finished = time.time()
        still_wanted = self.store.update(
            video_id,
            status=VideoStatus.COMPLETED.value,
            stage=Stage.DONE.value,
            progress=100,
            completed_at=finished,
            timings=timings,
            files={variant: file.sha256 for variant, file in stored.items()},
            bytes=stored["video"].size,
            inference_time_s=round(finished - started, 4),
            peak_memory_mb=round(result.peak_memory_mb, 1) if result.peak_memory_mb is not None else None,
            cache=result.cache,
        )
        if not still_wanted:
            log.info("%s was deleted while it ran; removing its files", video_id)
            self.storage.delete(video_id)
            self._record("deleted", timings)
            return {"status": "deleted"}
        self._notify(video_id)
        self._record(
            "completed",
            timings,
            skipped_ratio=skipped_ratio(result.cache),
            peak_memory_bytes=result.peak_memory_mb * 2**20 if result.peak_memory_mb is not None else None,
            step_seconds=clock.laps,
        )
        log.info("%s completed in %.2f s %s", video_id, finished - started, timings)
        return {"status": "completed", "timings": timings}

    def _notify(self, video_id: str) -> None:
        try:
            record = self.store.get(video_id)
        except VideoNotFound:  # deleted meanwhile: nobody to tell
            return
        video_ended(self.store.redis, record)

    def _progress(self, video_id: str, progress: int) -> None:
        self.store.update(video_id, progress=progress)

    def _stage(self, video_id: str, stage: Stage) -> None:
        self.store.update(video_id, stage=stage.value, progress=_STAGE_PROGRESS.get(stage, 0))

    def _store_files(
        self, video_id: str, frames: np.ndarray, fps: int, timings: dict[str, float]
    ) -> dict[str, StoredFile]:
        """Encode every variant into a scratch folder (stage ``encode``), then store each (stage ``store``:
        a rename into place, or an upload)."""
        self._stage(video_id, Stage.ENCODE)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"{video_id}-") as scratch:
            encoded = {variant: Path(scratch) / name for variant, (name, _) in VARIANT_FILES.items()}
            write_mp4(frames, encoded["video"], fps)
            write_thumbnail(frames, encoded["thumbnail"])
            write_spritesheet(frames, encoded["spritesheet"])
            timings["encode_s"] = round(time.perf_counter() - started, 4)
            self._stage(video_id, Stage.STORE)
            started = time.perf_counter()
            stored = {
                variant: self.storage.put(video_id, variant, _moved_from(source))
                for variant, source in encoded.items()
            }
        timings["store_s"] = round(time.perf_counter() - started, 4)
        return stored

    def _record(self, status: str, timings: dict[str, float], **details: Any) -> None:
        if self.metrics is not None:
            self.metrics.record_job(timings, status, **details)

    def _cancelled(
        self, video_id: str, message: str, timings: dict[str, float] | None = None
    ) -> dict[str, Any]:
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
        self._record("cancelled", timings or {})
        return {"status": "cancelled"}


def _moved_from(source: Path) -> Callable[[Path], None]:
    def produce(path: Path) -> None:
        shutil.move(source, path)

    return produce


def _cooperative_time_limit_s() -> int | None:
    """The running RQ job's timeout, for the engine to enforce at step boundaries; RQ's own alarm is moved
    BACKSTOP_GRACE_S past it. None outside an RQ job or without a limit."""
    job = get_current_job()
    if job is None:
        return None
    limit = job.timeout or Queue.DEFAULT_TIMEOUT  # as RQ's worker reads it
    if limit <= 0:  # RQ's -1: no limit
        return None
    # A SimpleWorker armed SIGALRM (UnixSignalDeathPenalty) in this, the main, thread; re-arming it only
    # moves the time it rings. Without an armed handler an alarm would kill the process: leave it.
    armed = signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    if armed and threading.current_thread() is threading.main_thread():
        signal.alarm(math.ceil(limit + BACKSTOP_GRACE_S))
    return int(limit)


_MESSAGES = {
    "generation_failed": "The video could not be generated because of an internal error in the worker.",
    "out_of_memory": (
        "The worker ran out of memory generating this video; a smaller size, fewer frames or fewer steps "
        "may fit."
    ),
    "worker_group_failed": "The worker group failed while generating this video.",
}
_FOR_CLIENTS = (InvalidRequest, StorageError)
"""Our own errors whose message is written for the client (sanitised all the same)."""
_PATH = re.compile(r"[^\s'\"(),;]*[\\/][^\s'\"(),;]*?(?=[.:]*(?:[\s'\"(),;]|$))")
"""A word with a slash in it (a path, relative or Windows too; a URL), less a trailing ``.`` or ``:``."""
_SUMMARY_CHARS = 200


def client_error(exc: BaseException, limit_s: int | None = None) -> dict[str, str]:
    """What a client is told about a failed job: a code and a fixed sentence, or a short sanitised summary
    of our own errors meant for clients; never paths, tracebacks or a library's text.

    Args:
        exc: the job's exception (an abort decided at a step boundary is classified by its cause).
        limit_s: the job's time limit, named in a ``job_timeout`` message.
    """
    cause = exc.__cause__ if isinstance(exc, GenerationAborted) and exc.__cause__ is not None else exc
    if isinstance(cause, JobTimeoutException) or (
        isinstance(cause, GenerationAborted) and cause.code == "job_timeout"
    ):
        limit = f"its {limit_s} s" if limit_s else "its"
        return {
            "code": "job_timeout",
            "message": f"The job ran longer than {limit} limit (WANSERVE_JOB_TIMEOUT_S).",
        }
    if isinstance(cause, _FOR_CLIENTS):
        return {"code": cause.code, "message": _sanitised(cause.message)}
    if _out_of_memory(cause):
        code = "out_of_memory"
    elif isinstance(cause, GroupFailed):
        code = "worker_group_failed"
    else:
        code = "generation_failed"
    return {"code": code, "message": _MESSAGES[code]}


def _out_of_memory(exc: BaseException) -> bool:
    # torch_npu reports an exhausted NPU as a RuntimeError("NPU out of memory. ...").
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


def _sanitised(text: str) -> str:
    """The first line, paths replaced, at most _SUMMARY_CHARS characters."""
    lines = text.strip().splitlines()
    line = _PATH.sub("<path>", lines[0] if lines else "")
    return line if len(line) <= _SUMMARY_CHARS else line[: _SUMMARY_CHARS - 1] + "…"
