"""The RQ worker: a SimpleWorker (no fork, so the model stays resident) that keeps its heartbeat alive.

RQ gives a started job a heartbeat TTL of about 90 s and refreshes it only from a forked worker's
monitoring loop. A SimpleWorker runs the job in its own thread of control and never refreshes it, so a
video longer than the TTL would be treated as abandoned while still running. A background thread
refreshes both the worker's and the job's heartbeat while a job runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.job import Job

log = logging.getLogger("wanserve.worker")

HEARTBEAT_INTERVAL_S = 15
HEARTBEAT_TTL_S = 90


class WanWorker(SimpleWorker):
    stop_when: Callable[[], bool] = staticmethod(lambda: False)
    """Checked after each job: True ends the work loop (a worker group that can no longer be trusted)."""

    def perform_job(self, job: Job, queue: Queue) -> bool:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="rq-heartbeat", daemon=True)
        beat.start()
        try:
            return super().perform_job(job, queue)
        finally:
            stop.set()
            beat.join(timeout=5)
            if self.stop_when():
                log.error("worker %s stops taking jobs: its group must restart", self.name)
                self._stop_requested = True

    def _beat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.heartbeat(HEARTBEAT_TTL_S)
                job.heartbeat(datetime.now(UTC), HEARTBEAT_TTL_S)
            except RedisError as exc:  # Redis briefly away: the next beat tries again
                log.warning("heartbeat for %s failed: %s", job.id, exc)
