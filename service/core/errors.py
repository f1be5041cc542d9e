"""Domain errors. Raised by validation, the job store and storage; only the HTTP layer maps them to codes."""

from __future__ import annotations


class WanserveError(Exception):
    """Base class: ``message`` for people, ``code`` for programs, ``param`` names the offending field."""

    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(WanserveError):
    type = "invalid_request_error"
    code = "invalid_value"


class VideoNotFound(WanserveError):
    type = "invalid_request_error"
    code = "video_not_found"

    def __init__(self, video_id: str) -> None:
        super().__init__(f"No video with id '{video_id}'.", param="video_id")


class VideoNotReady(WanserveError):
    type = "invalid_request_error"
    code = "video_not_ready"


class BackendUnavailable(WanserveError):
    """Redis (or another backing service) cannot be reached."""

    type = "server_error"
    code = "backend_unavailable"


class StorageError(WanserveError):
    """The video could not be written or read (disk full, unwritable folder)."""

    type = "server_error"
    code = "storage_error"


class GenerationCancelled(WanserveError):
    """Raised inside the denoising loop when a cancel was requested; the job ends ``cancelled``."""

    type = "invalid_request_error"
    code = "cancelled"
