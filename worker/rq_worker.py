"""The RQ worker: a SimpleWorker (no fork, so the model stays resident) that keeps its heartbeat alive
and puts jobs abandoned by dead workers back on the queue.

RQ gives a started job's execution a heartbeat TTL of about 90 s and refreshes it only from a forked
worker's monitoring loop. A SimpleWorker runs the job in its own thread of control and never refreshes
it, so a video longer than the TTL would be treated as abandoned while still running. A background
thread refreshes the worker's, the execution's and the job's heartbeats while a job runs.

RQ finds abandoned jobs (a started job whose heartbeat expired) only during worker maintenance, every
10 minutes. A second thread runs that cleanup every ``reap_interval_s``: a job whose worker was
killed is back on the queue (jobs are enqueued with ``Retry``) within ``heartbeat_ttl_s +
reap_interval_s`` of the kill, or, with no retries left, ends ``failed`` in its video record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job

from service.core.lost_jobs import settle_lost_jobs
from service.core.video_store import VideoStore
from worker.presence import WorkerPresence

log = logging.getLogger("wanserve.worker")


class WanWorker(SimpleWorker):
    heartbeat_ttl_s: int = 60
    reap_interval_s: float = 10.0
    result_ttl_s: int | None = None
    """For the expiry time in the webhook of a video this worker ends because its job was lost."""
    stop_when: Callable[[], bool] = staticmethod(lambda: False)
    """Checked after each job: True ends the work loop (a worker group that can no longer be trusted)."""
    presence: WorkerPresence | None = None
    """The worker's registry entry and probes: busy while a job runs, draining once asked to stop."""
    stop_requested: bool = False
    """Whether the work loop ended, or ends after the running job, because it was asked to: a signal,
    RQ's shutdown command, or ``stop_when``. False when it ended otherwise (Redis was lost)."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        stop = threading.Event()
        reaper = threading.Thread(target=self._reap, args=(stop,), name="rq-reaper", daemon=True)
        reaper.start()
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            stop.set()

    def handle_warm_shutdown_request(self) -> None:
        # RQ's hook for a signal or its shutdown command: the loop ends now, or after the running job.
        self.stop_requested = True
        if self.presence is not None:
            self.presence.draining()
        super().handle_warm_shutdown_request()

    def perform_job(self, job: Job, queue: Queue) -> bool:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="rq-heartbeat", daemon=True)
        beat.start()
        if self.presence is not None:
            self.presence.busy(job.id)
        try:
            performed = super().perform_job(job, queue)
        finally:
            stop.set()
            beat.join(timeout=5)
            if self.presence is not None:
                self.presence.idle()
        if self.stop_when():
            log.error("worker %s stops taking jobs: its group must restart", self.name)
            self.stop_requested = True
            raise StopRequested  # RQ's way out of the work loop; the job has ended
        return performed

    def _beat(self, job: Job, stop: threading.Event) -> None:
        interval = max(1.0, self.heartbeat_ttl_s / 4)
        while True:
            try:
                self._refresh_heartbeats(job)
            except RedisError as exc:  # Redis briefly away: the next beat tries again
                log.warning("heartbeat for %s failed: %s", job.id, exc)
            if stop.wait(interval):
                return

    def _refresh_heartbeats(self, job: Job) -> None:
        # RQ 2 tracks a started job by its execution: the execution's score in the started registry is
        # what the abandoned-job cleanup reads (as in BaseWorker.maintain_heartbeats, with our TTL).
        with self.connection.pipeline() as pipe:
            self.heartbeat(self.heartbeat_ttl_s, pipeline=pipe)
            if self.execution is not None:
                self.execution.heartbeat(job.started_job_registry, self.heartbeat_ttl_s, pipeline=pipe)
            job.heartbeat(datetime.now(UTC), self.heartbeat_ttl_s, pipeline=pipe, xx=True)
            pipe.execute()

    def _reap(self, stop: threading.Event) -> None:
        connection = Redis(connection_pool=self.connection.connection_pool)
        while not stop.wait(self.reap_interval_s):
            try:
                for queue in self.queues:
                    settle_lost_jobs(VideoStore(connection, queue.name), self.result_ttl_s)
            except RedisError as exc:
                log.warning("looking for abandoned jobs failed: %s", exc)
