"""Video records in Redis, and the one place that turns a record plus RQ's job state into the public view.

A record is a Redis hash (``wanserve:video:{id}``) of JSON-encoded fields. It is ours, not RQ's
``job.meta``: RQ's ``save_meta`` rewrites the whole meta dict, so a field written by the API would be
lost to the worker's next progress write. RQ only moves the job; the record says what happened to it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from service import jobs
from service.errors import VideoNotFound
from service.jobs import Stage, VideoStatus
from service.schemas import GenerationParams

Record = dict[str, Any]


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


class VideoStore:
    """Reads and writes video records; enqueues the job in the same transaction as the record."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue = Queue(queue_name, connection=redis, serializer=jobs.SERIALIZER)

    # -- API side -----------------------------------------------------------------------------

    def create(
        self, params: GenerationParams, *, model: str, job_timeout_s: int, result_ttl_s: int, retries: int
    ) -> Record:
        video_id = new_video_id()
        now = time.time()
        record: Record = {
            "id": video_id,
            "status": VideoStatus.QUEUED.value,
            "stage": Stage.QUEUED.value,
            "progress": 0,
            "model": model,
            "params": params.to_json(),
            "created_at": now,
            "timings": {},
        }
        with self.redis.pipeline() as pipe:
            pipe.multi()  # RQ switches the pipeline to MULTI itself; it must happen before our commands
            pipe.hset(jobs.video_key(video_id), mapping=_encode(record))
            pipe.zadd(jobs.VIDEOS_INDEX_KEY, {video_id: int(now * 1_000_000)})
            self.queue.enqueue_call(
                jobs.GENERATE_FUNCTION,
                args=(video_id,),
                job_id=video_id,
                timeout=job_timeout_s,
                result_ttl=result_ttl_s,
                failure_ttl=result_ttl_s,
                # Retry is what makes RQ requeue a job abandoned by a dead worker, not fail it.
                retry=Retry(max=retries) if retries else None,
                pipeline=pipe,
            )
            pipe.execute()
        return record

    def get(self, video_id: str) -> Record:
        if not jobs.is_valid_video_id(video_id):
            raise VideoNotFound(video_id)
        raw = self.redis.hgetall(jobs.video_key(video_id))
        if not raw:
            raise VideoNotFound(video_id)
        return _decode(raw)

    def list_ids(self, *, after: str | None, limit: int, order: str) -> tuple[list[str], bool]:
        """A page of ids, newest first for ``order="desc"``; returns (ids, has_more)."""
        descending = order == "desc"
        start = 0
        if after is not None:
            rank = (
                self.redis.zrevrank(jobs.VIDEOS_INDEX_KEY, after)
                if descending
                else self.redis.zrank(jobs.VIDEOS_INDEX_KEY, after)
            )
            if rank is None:
                raise VideoNotFound(after)
            start = cast(int, rank) + 1
        fetch = self.redis.zrevrange if descending else self.redis.zrange
        page = cast(list[bytes], fetch(jobs.VIDEOS_INDEX_KEY, start, start + limit))
        ids = [video_id.decode() for video_id in page]
        return ids[:limit], len(ids) > limit

    def delete(self, video_id: str) -> Record:
        """Remove the record; a queued job is cancelled, a running one is told to stop at its next step."""
        record = self.get(video_id)
        job = self._job(video_id)
        if job is not None and job.get_status() in (
            JobStatus.QUEUED,
            JobStatus.DEFERRED,
            JobStatus.SCHEDULED,
        ):
            job.cancel()
        with self.redis.pipeline() as pipe:
            if not VideoStatus(record["status"]).is_terminal:
                pipe.set(jobs.cancel_key(video_id), "deleted", ex=24 * 3600)
            pipe.delete(jobs.video_key(video_id))
            pipe.zrem(jobs.VIDEOS_INDEX_KEY, video_id)
            pipe.execute()
        return record

    def public_status(self, record: Record) -> tuple[VideoStatus, Record | None]:
        """The status to show, looking at RQ when the record alone cannot tell (a worker died mid-job)."""
        status = VideoStatus(record["status"])
        if status.is_terminal:
            return status, record.get("error")
        job = self._job(record["id"])
        job_status = job.get_status(refresh=False) if job is not None else None
        if job is None:
            return VideoStatus.FAILED, {"code": "job_lost", "message": "The job disappeared from the queue."}
        if job_status in (JobStatus.FAILED, JobStatus.STOPPED):
            if record.get("error"):  # the last attempt said why before giving the job back
                return VideoStatus.FAILED, record["error"]
            result = job.latest_result()
            return VideoStatus.FAILED, {
                "code": "worker_failed",
                "message": _last_line(result.exc_string if result else None)
                or "The worker stopped before finishing this video.",
            }
        if job_status == JobStatus.CANCELED:
            return VideoStatus.CANCELLED, None
        return status, None

    def queue_position(self, video_id: str) -> int | None:
        position = cast(int | None, self.redis.lpos(self.queue.key, video_id))
        return position

    def _job(self, video_id: str) -> Job | None:
        try:
            return Job.fetch(video_id, connection=self.redis, serializer=jobs.SERIALIZER)
        except NoSuchJobError:
            return None

    # -- worker side ----------------------------------------------------------------------------

    def update(self, video_id: str, **fields: Any) -> bool:
        """Write fields of a record that still exists; False when it was deleted meanwhile."""
        key = jobs.video_key(video_id)
        # HSET on a deleted record would resurrect it as a fragment: only write while it exists.
        written = self.redis.eval(_UPDATE_IF_EXISTS, 1, key, *_flatten(_encode(fields)))
        return bool(written)

    def cancel_requested(self, video_id: str) -> bool:
        return bool(self.redis.exists(jobs.cancel_key(video_id)))

    def clear_cancel(self, video_id: str) -> None:
        self.redis.delete(jobs.cancel_key(video_id))


_UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def _encode(fields: Record) -> dict[Any, Any]:
    return {key: json.dumps(value) for key, value in fields.items()}


def _decode(raw: dict[Any, Any]) -> Record:
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


def _flatten(mapping: dict[Any, Any]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
