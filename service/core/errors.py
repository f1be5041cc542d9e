"""Every error a client can be answered with: its HTTP status, type and code live on the class.

Raised by validation, the job store, storage, auth and admission; rendered into the OpenAI error body in one
place (:mod:`service.api.error_handlers`). The worker records the same ``type``/``code`` in a failed video.
"""

from __future__ import annotations


class WanserveError(Exception):
    """Base class: ``message`` for people, ``code`` for programs, ``param`` names the offending field."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the status calls for (``Retry-After``, ``WWW-Authenticate``, ...)."""
        return {}


class InvalidRequest(WanserveError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class Unauthorized(WanserveError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class VideoNotFound(WanserveError):
    status = 404
    type = "invalid_request_error"
    code = "video_not_found"

    def __init__(self, video_id: str) -> None:
        super().__init__(f"No video with id '{video_id}'.", param="video_id")


class RequestTimeout(WanserveError):
    """The request's headers or body did not arrive in time: the connection is closed after the answer."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class VideoNotReady(WanserveError):
    status = 409
    type = "invalid_request_error"
    code = "video_not_ready"


class IdempotencyConflict(WanserveError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class RequestTooLarge(WanserveError):
    """The body is over the limit: the connection is closed rather than the rest of it read."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class RangeNotSatisfiable(WanserveError):
    status = 416
    type = "invalid_request_error"
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"The requested range is not satisfiable; the file has {size} bytes.", param="Range")
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class TooManyRequests(WanserveError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class StorageError(WanserveError):
    """The video could not be written or read (disk full, unwritable folder)."""

    status = 500
    type = "server_error"
    code = "storage_error"


class BackendUnavailable(WanserveError):
    """Redis (or another backing service) cannot be reached."""

    status = 503
    type = "server_error"
    code = "backend_unavailable"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class GenerationCancelled(Exception):
    """Raised inside the denoising loop when a cancel was requested; the job ends ``cancelled``.

    Not a client error: it never becomes an HTTP answer, only the video's ``cancelled`` status.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
