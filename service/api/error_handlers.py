"""The one place that maps domain errors to HTTP status codes and the OpenAI error body."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.admission import IdempotencyConflict, TooManyRequests
from service.api.auth import Unauthorized
from service.core import errors

log = logging.getLogger("wanserve.api")

_STATUS = {
    Unauthorized: 401,
    TooManyRequests: 429,
    IdempotencyConflict: 409,
    errors.InvalidRequest: 400,
    errors.VideoNotFound: 404,
    errors.VideoNotReady: 409,
    errors.BackendUnavailable: 503,
    errors.StorageError: 500,
}


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: text that cannot be encoded as UTF-8 (a lone surrogate in a record
    stored before such text was refused) still renders, rather than failing every read that carries it."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.WanserveError)
    async def _domain(_: Request, exc: errors.WanserveError) -> JSONResponse:
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        headers = {}
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return SafeJSONResponse(
            error_body(exc.message, exc.type, exc.param, exc.code), status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
        param = ".".join(loc) or None
        message = (
            f"Invalid '{param}': {first.get('msg', 'invalid value')}." if param else str(first.get("msg"))
        )
        return SafeJSONResponse(
            error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return SafeJSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return SafeJSONResponse(
            error_body(
                "The job store (Redis) is unreachable; try again shortly.",
                "server_error",
                None,
                "backend_unavailable",
            ),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette would answer in plain text; the traceback goes to the log, never to the client.
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return SafeJSONResponse(
            error_body("The server failed to handle this request.", "server_error", None, "internal_error"),
            status_code=500,
        )
