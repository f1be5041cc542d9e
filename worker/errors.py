"""How a job fails on the worker side, short of a cancel: errors the API never raises, which the job
records in its video as a classified error (``worker.video_job.client_error``)."""

from __future__ import annotations


class GenerationAborted(RuntimeError):
    """Every rank stopped the job at the same step boundary because of the leader: one of the job's
    callbacks failed there (the leader chains it as ``__cause__``), or the job's deadline passed
    (``code`` ``job_timeout``)."""

    def __init__(self, message: str, code: str = "generation_failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class GroupFailed(RuntimeError):
    """Another rank of the worker group failed, or the ranks disagree about what happened.

    The job itself may be fine: it is the one failure a job raises to RQ, whose ``Retry`` then gives it
    to the restarted group.
    """

    code = "worker_group_failed"
