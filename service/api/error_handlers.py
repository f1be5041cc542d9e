"""The one place errors become responses: each :mod:`service.core.errors` class carries its status, type,
code and headers; here they are rendered as the OpenAI error body, for FastAPI and for the layers below it."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core import errors

log = logging.getLogger("wanserve.api")


def error_body(exc: errors.WanserveError) -> dict[str, object]:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_bytes(exc: errors.WanserveError) -> bytes:
    """The same body, encoded, for the layers below FastAPI (the protocol and the body limit)."""
    return json_bytes(error_body(exc))


def json_bytes(content: object) -> bytes:
    """JSON with non-ASCII escaped: text that cannot be encoded as UTF-8 (a lone surrogate in a record
    stored before such text was refused) still renders, rather than failing every read that carries it."""
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class SafeJSONResponse(JSONResponse):
    """A response rendered by :func:`json_bytes`."""

    def render(self, content: object) -> bytes:
        return json_bytes(content)


def error_response(exc: errors.WanserveError) -> JSONResponse:
    return SafeJSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.WanserveError)
    async def _domain(_: Request, exc: errors.WanserveError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
        param = ".".join(loc) or None
        message = (
            f"Invalid '{param}': {first.get('msg', 'invalid value')}." if param else str(first.get("msg"))
        )
        return error_response(errors.InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (unknown route, wrong method): its status, our body.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(errors.InvalidRequest(str(exc.detail), code=code))
        return SafeJSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return error_response(
            errors.BackendUnavailable("The job store (Redis) is unreachable; try again shortly.")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette would answer in plain text; the traceback goes to the log, never to the client.
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(errors.WanserveError("The server failed to handle this request."))
