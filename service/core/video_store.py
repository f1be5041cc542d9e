"""Video records in Redis, and the one place that turns a record plus RQ's job state into the public view.

A record is a Redis hash (``wanserve:video:{id}``) of JSON-encoded fields. It is ours, not RQ's
``job.meta``: RQ's ``save_meta`` rewrites the whole meta dict, so a field written by the API would be
lost to the worker's next progress write. RQ only moves the job; the record says what happened to it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError, WatchError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from service.core import redis_keys
from service.core.errors import BackendUnavailable, InvalidRequest, VideoNotFound, VideoNotReady
from service.core.lifecycle import Stage, VideoStatus
from service.core.schemas import GenerationParams

Record = dict[str, Any]

IDEMPOTENCY_TTL_S = 24 * 3600
"""How long an ``Idempotency-Key`` keeps returning the video it created (if that video still exists)."""
_MAX_WATCH_RETRIES = 100
DELETED = "deleted"
"""The message on a video's events channel when it is deleted (else: its record's new version)."""


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class VideoRead:
    """A record with the public status RQ's job state gives it: all a video's public view needs."""

    record: Record
    status: VideoStatus
    error: Record | None
    queue_position: int | None

    @property
    def version(self) -> int:
        """Bumped by every write of the record (see ``_ANNOUNCE``)."""
        return int(self.record.get("version", 0))


class VideoStore:
    """Reads and writes video records; enqueues the job in the same transaction as the record."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue = Queue(queue_name, connection=redis, serializer=redis_keys.SERIALIZER)

    # -- API side -----------------------------------------------------------------------------

    def create(
        self,
        params: GenerationParams,
        *,
        model: str,
        owner: str,
        job_timeout_s: int,
        result_ttl_s: int,
        retries: int,
        video_id: str | None = None,
        webhook_url: str | None = None,
        idempotency_slot: str | None = None,
        admit: Callable[[int], None] | None = None,
    ) -> Record:
        """Write the record and enqueue its job in one transaction: never one without the other.

        Args:
            idempotency_slot: The Redis key of the ``Idempotency-Key`` claim that led here; in the same
                transaction it is given ``IDEMPOTENCY_TTL_S``, and deleting the video removes it (see
                :class:`service.api.admission.IdempotencyKeys`).
            admit: Called with the number of jobs waiting, atomically with the enqueue (it raises to
                refuse): concurrent creates cannot overshoot a queue limit.
        """
        video_id = video_id or new_video_id()
        now = time.time()
        record: Record = {
            "id": video_id,
            "owner": owner,
            "status": VideoStatus.QUEUED.value,
            "stage": Stage.QUEUED.value,
            "progress": 0,
            "model": model,
            "params": params.to_json(),
            "created_at": now,
            "timings": {},
            "webhook_url": webhook_url,
            "idempotency_slot": idempotency_slot,
            "version": 0,
        }
        score = int(now * 1_000_000)
        for _ in range(_MAX_WATCH_RETRIES):
            with self.redis.pipeline() as pipe:
                try:
                    # WATCH the queue: if any job is enqueued or taken between our count and our EXEC,
                    # the transaction is dropped and we count again.
                    pipe.watch(self.queue.key)
                    if admit is not None:
                        admit(cast(int, pipe.llen(self.queue.key)))
                    pipe.multi()  # RQ would switch to MULTI itself; it must happen before our commands
                    pipe.hset(redis_keys.video_key(video_id), mapping=_encode(record))
                    pipe.zadd(redis_keys.VIDEOS_INDEX_KEY, {video_id: score})
                    pipe.zadd(redis_keys.owner_index_key(owner), {video_id: score})
                    if idempotency_slot is not None:
                        pipe.expire(idempotency_slot, IDEMPOTENCY_TTL_S)
                    pipe.publish(redis_keys.video_events_channel(video_id), 0)  # new in its owner's list
                    self.queue.enqueue_call(
                        redis_keys.GENERATE_FUNCTION,
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
                except WatchError:
                    continue
        raise BackendUnavailable(
            "The queue is too busy to take this video right now; try again.", code="queue_busy"
        )

    def get(self, video_id: str, owner: str | None = None) -> Record:
        """The record; another owner's video is as unknown as one that does not exist."""
        if not redis_keys.is_valid_video_id(video_id):
            raise VideoNotFound(video_id)
        return _record_of(
            video_id, cast(dict[bytes, bytes], self.redis.hgetall(redis_keys.video_key(video_id))), owner
        )

    async def read_async(self, redis: AsyncRedis, video_id: str, owner: str | None = None) -> VideoRead:
        """:meth:`get` with :meth:`public_status` and :meth:`queue_position`, in one round trip (asyncio)."""
        if not redis_keys.is_valid_video_id(video_id):
            raise VideoNotFound(video_id)
        reply = await _READ_ONE.run_async(redis, [self.queue.key], [*_READ_ARGS, video_id])
        return _video_read(reply, owner)

    async def list_async(
        self, redis: AsyncRedis, *, owner: str, after: str | None, limit: int, order: str
    ) -> tuple[list[VideoRead], bool]:
        """A page of the owner's videos, newest first for ``order="desc"``, in one round trip (asyncio);
        returns (videos, has_more)."""
        args = [*_READ_ARGS, after or "", limit, order]
        reply = await _READ_PAGE.run_async(redis, [self.queue.key, redis_keys.owner_index_key(owner)], args)
        if reply is None:
            raise InvalidRequest(
                "'after' names no video of yours (it may have been deleted or expired).",
                param="after",
                code="invalid_cursor",
            )
        has_more, replies = reply
        videos = []
        for video in replies:
            try:
                videos.append(_video_read(video, owner))
            except VideoNotFound:  # an index entry whose record is gone, or another owner's
                continue
        return videos, bool(has_more)

    def cancel(self, video_id: str, owner: str | None = None) -> Record:
        """Cancel a queued job at once; tell a running one to stop at its next denoising step.

        Raises:
            VideoNotReady: the video has already ended (completed, failed or cancelled).
        """
        record = self.get(video_id, owner)
        status, _ = self.public_status(record)
        if status.is_terminal:
            raise VideoNotReady(
                f"Video '{video_id}' is already {status.value}; only queued or running videos can be "
                "cancelled.",
                param="video_id",
                code="video_not_cancellable",
            )
        self.redis.set(redis_keys.cancel_key(video_id), "cancel", ex=24 * 3600)
        if self._cancel_queued_job(video_id):
            self.update(
                video_id,
                status=VideoStatus.CANCELLED.value,
                completed_at=time.time(),
                error={"code": "cancelled", "message": "Cancelled before it started."},
            )
        return self.get(video_id)

    def delete(self, video_id: str, owner: str | None = None) -> Record:
        """Remove the record and everything kept for it (its RQ job, its Idempotency-Key claim); a queued
        job is cancelled, a running one is told to stop at its next step (RQ's result TTL then ends it)."""
        record = self.get(video_id, owner)
        job = self._job(video_id)
        running = job is not None and job.get_status(refresh=False) == JobStatus.STARTED
        with self.redis.pipeline() as pipe:
            if running:
                pipe.set(redis_keys.cancel_key(video_id), "deleted", ex=24 * 3600)
            else:
                pipe.delete(redis_keys.cancel_key(video_id))
            pipe.delete(redis_keys.video_key(video_id))
            pipe.zrem(redis_keys.VIDEOS_INDEX_KEY, video_id)
            pipe.zrem(redis_keys.owner_index_key(record.get("owner", redis_keys.PUBLIC_OWNER)), video_id)
            if record.get("idempotency_slot"):
                pipe.delete(record["idempotency_slot"])
            pipe.publish(redis_keys.video_events_channel(video_id), DELETED)
            pipe.execute()
        if job is not None and not running:
            # Job.delete removes the job hash and its entries in the queue and every registry.
            job.delete(remove_from_queue=True, delete_dependents=False)
        # Once the job has left the queue: the videos behind it read their new positions.
        self.redis.publish(redis_keys.video_events_channel(redis_keys.QUEUE_MOVED), 1)
        return record

    def expired_ids(self, ttl_s: float, now: float | None = None, batch: int = 500) -> Iterator[str]:
        """Videos that ended more than ``ttl_s`` ago (only those created that long ago can have).

        Every candidate is looked at, ``batch`` at a time: however many old videos have not ended, the
        ones behind them still expire.
        """
        now = time.time() if now is None else now
        newest = int((now - ttl_s) * 1_000_000)
        lowest = 0
        seen: set[bytes] = set()
        while True:
            page = cast(
                list[tuple[bytes, float]],
                self.redis.zrangebyscore(
                    redis_keys.VIDEOS_INDEX_KEY, lowest, newest, start=0, num=batch, withscores=True
                ),
            )
            fresh = [raw_id for raw_id, _ in page if raw_id not in seen]
            if not fresh:
                return
            seen.update(fresh)
            for raw_id in fresh:
                video_id = raw_id.decode()
                try:
                    record = self.get(video_id)
                except VideoNotFound:
                    self.redis.zrem(redis_keys.VIDEOS_INDEX_KEY, video_id)
                    continue
                ended = record.get("completed_at")
                if VideoStatus(record["status"]).is_terminal and ended is not None and ended + ttl_s <= now:
                    yield video_id
            if len(page) < batch:
                return
            # Resume at the last score seen (inclusive: ids may share it; those seen are skipped).
            lowest = int(page[-1][1])

    def _cancel_queued_job(self, video_id: str) -> bool:
        job = self._job(video_id)
        if job is not None and job.get_status() in (
            JobStatus.QUEUED,
            JobStatus.DEFERRED,
            JobStatus.SCHEDULED,
        ):
            job.cancel()
            return True
        return False

    def public_status(self, record: Record) -> tuple[VideoStatus, Record | None]:
        """The status to show, looking at RQ when the record alone cannot tell (a worker died mid-job)."""
        if VideoStatus(record["status"]).is_terminal:
            return _public_status(record, None)
        job = self._job(record["id"])
        return _public_status(record, job.get_status(refresh=False) if job is not None else None)

    def queue_position(self, video_id: str) -> int | None:
        position = cast(int | None, self.redis.lpos(self.queue.key, video_id))
        return position

    def _job(self, video_id: str) -> Job | None:
        try:
            return Job.fetch(video_id, connection=self.redis, serializer=redis_keys.SERIALIZER)
        except NoSuchJobError:
            return None

    # -- worker side ----------------------------------------------------------------------------

    def update(self, video_id: str, **fields: Any) -> bool:
        """Write fields of a record that still exists; False when it was deleted meanwhile."""
        key = redis_keys.video_key(video_id)
        # HSET on a deleted record would resurrect it as a fragment: only write while it exists.
        written = self.redis.eval(_UPDATE_IF_EXISTS, 1, key, *_channels(video_id), *_flatten(_encode(fields)))
        return bool(written)

    def end_if_unchanged(self, video_id: str, expected_status: str, **fields: Any) -> bool:
        """Write fields (an ending) only while the record still has ``expected_status``: of several
        processes that see the same lost job, one ends it (and sends its webhook)."""
        key = redis_keys.video_key(video_id)
        written = self.redis.eval(
            _UPDATE_IF_STATUS,
            1,
            key,
            *_channels(video_id),
            json.dumps(expected_status),
            *_flatten(_encode(fields)),
        )
        return bool(written)

    def cancel_requested(self, video_id: str) -> bool:
        return bool(self.redis.exists(redis_keys.cancel_key(video_id)))

    def clear_cancel(self, video_id: str) -> None:
        self.redis.delete(redis_keys.cancel_key(video_id))


def _public_status(record: Record, job_status: JobStatus | None) -> tuple[VideoStatus, Record | None]:
    """The one rule for the status to show, from the record and its RQ job's status (None: no job)."""
    status = VideoStatus(record["status"])
    if status.is_terminal:
        return status, record.get("error")
    if job_status is None:
        return VideoStatus.FAILED, {"code": "job_lost", "message": "The job disappeared from the queue."}
    if job_status in (JobStatus.FAILED, JobStatus.STOPPED):
        if record.get("error"):  # the last attempt said why before giving the job back
            return VideoStatus.FAILED, record["error"]
        # RQ's exception text (a worker's traceback) is for the worker's log, not for clients.
        return VideoStatus.FAILED, {
            "code": "worker_failed",
            "message": "The worker running this video stopped before finishing it (killed or lost).",
        }
    if job_status == JobStatus.CANCELED:
        return VideoStatus.CANCELLED, None
    return status, None


def _record_of(video_id: str, raw: dict[bytes, bytes], owner: str | None) -> Record:
    """A record read from its hash; another owner's video is as unknown as one that does not exist."""
    if not raw:
        raise VideoNotFound(video_id)
    record = _decode(raw)
    if owner is not None and record.get("owner", redis_keys.PUBLIC_OWNER) != owner:
        raise VideoNotFound(video_id)
    return record


def _video_read(reply: Sequence[Any], owner: str | None) -> VideoRead:
    """A video as the read scripts return it: [id, the record hash flattened, whether its RQ job hash
    has its ``data`` field, the job's status, its queue position (read only while the record is queued)].

    A job hash without ``data`` is no job, and one without ``status`` is created, as rq's ``Job.fetch``
    reads them.
    """
    raw_id, flat, job_has_data, raw_job_status, position = reply
    video_id = raw_id.decode()
    record = _record_of(video_id, dict(zip(flat[::2], flat[1::2], strict=True)), owner)
    job_status = None
    if job_has_data:
        job_status = JobStatus(raw_job_status.decode()) if raw_job_status else JobStatus.CREATED
    status, error = _public_status(record, job_status)
    return VideoRead(record, status, error, position if status == VideoStatus.QUEUED else None)


class _Lua:
    """A Lua script run by its digest, loaded into Redis the first time it is missing there."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run_async(self, redis: AsyncRedis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]


# Keys are built inside these scripts from the prefixes in ARGV: fine on one Redis server (what RQ
# needs too), not on Redis Cluster.
_READ_VIDEO = """
-- KEYS[1]: the RQ queue. ARGV[1]: video key prefix, ARGV[2]: RQ job key prefix, ARGV[3]: 'queued' as JSON.
-- Each redis.call costs more than the work it does here: as few as possible per video.
local function read(id)
  local record = redis.call('HGETALL', ARGV[1] .. id)
  local position = false
  for i = 1, #record, 2 do
    if record[i] == 'status' then
      if record[i + 1] == ARGV[3] then position = redis.call('LPOS', KEYS[1], id) end
      break
    end
  end
  local job = redis.call('HMGET', ARGV[2] .. id, 'status', 'data')
  return {id, record, job[2] and 1 or 0, job[1], position}
end
"""

_READ_ARGS = [redis_keys.video_key(""), Job.key_for(""), json.dumps(VideoStatus.QUEUED.value)]
"""ARGV[1:3] of the read scripts: how they find a video's keys (the layout stays in redis_keys and RQ)."""

_READ_ONE = _Lua(
    _READ_VIDEO
    + """
return read(ARGV[4])
"""
)

_READ_PAGE = _Lua(
    _READ_VIDEO
    + """
-- KEYS[2]: the owner's index. ARGV[4]: the id to start after ('' for the first page), ARGV[5]: limit,
-- ARGV[6]: 'desc' (newest first) or 'asc'. Returns nil for an unknown 'after', else {has_more, videos}.
local descending = ARGV[6] == 'desc'
local start = 0
if ARGV[4] ~= '' then
  local rank
  if descending then rank = redis.call('ZREVRANK', KEYS[2], ARGV[4])
  else rank = redis.call('ZRANK', KEYS[2], ARGV[4]) end
  if not rank then return nil end
  start = rank + 1
end
local limit = tonumber(ARGV[5])
local ids
if descending then ids = redis.call('ZREVRANGE', KEYS[2], start, start + limit)
else ids = redis.call('ZRANGE', KEYS[2], start, start + limit) end
local videos = {}
for i = 1, math.min(#ids, limit) do videos[i] = read(ids[i]) end
return {#ids > limit and 1 or 0, videos}
"""
)


# Every write of a record goes through one of these: it bumps the record's version and announces it, so
# an event stream never polls (see service.api.events).
_ANNOUNCE = """
-- KEYS[1]: the record. ARGV[1]: its events channel, ARGV[2]: the queue-moved one; fields from ARGV[first].
local function write_and_announce(first)
  redis.call('HSET', KEYS[1], unpack(ARGV, first))
  local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('PUBLISH', ARGV[1], version)
  for i = first, #ARGV, 2 do
    if ARGV[i] == 'status' then redis.call('PUBLISH', ARGV[2], 1) break end
  end
  return 1
end
"""

_UPDATE_IF_EXISTS = (
    _ANNOUNCE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return write_and_announce(3)
"""
)


_UPDATE_IF_STATUS = (
    _ANNOUNCE
    + """
-- ARGV[3]: the status the record must still have.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[3] then return 0 end
return write_and_announce(4)
"""
)


def _channels(video_id: str) -> list[str]:
    """ARGV[1:2] of the write scripts."""
    return [
        redis_keys.video_events_channel(video_id),
        redis_keys.video_events_channel(redis_keys.QUEUE_MOVED),
    ]


def _encode(fields: Record) -> dict[Any, Any]:
    return {key: json.dumps(value) for key, value in fields.items()}


def _decode(raw: dict[bytes, bytes]) -> Record:
    # Every value is a JSON text (see _encode): parsed as one array, several times faster than one
    # parse per field (a page of the list decodes twenty records).
    values = json.loads(b"[%b]" % b",".join(raw.values()))
    return dict(zip(map(bytes.decode, raw), values, strict=True))


def _flatten(mapping: dict[Any, Any]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]
