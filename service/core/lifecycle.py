"""A video's status and the stage of its job: what the API reports and the worker records."""

from __future__ import annotations

from enum import StrEnum


class VideoStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (VideoStatus.COMPLETED, VideoStatus.FAILED, VideoStatus.CANCELLED)


class Stage(StrEnum):
    QUEUED = "queued"
    NO_WORKER = "no_worker"
    """Queued, and no live worker serves the video's model yet (reported by the API, never stored)."""
    TEXT_ENCODE = "text_encode"
    DENOISE = "denoise"
    VAE_DECODE = "vae_decode"
    ENCODE = "encode"
    STORE = "store"
    DONE = "done"
