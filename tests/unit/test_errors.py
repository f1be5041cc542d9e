"""Each error class carries its status and headers; one function renders them all."""

from __future__ import annotations

import json

import pytest

from service.api.error_handlers import error_bytes, error_response
from service.core import errors


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (errors.InvalidRequest("bad", param="size"), 400, {}),
        (errors.Unauthorized("who?"), 401, {"www-authenticate": "Bearer"}),
        (errors.VideoNotFound("video_x"), 404, {}),
        (errors.RequestTimeout("slow"), 408, {"connection": "close"}),
        (errors.IdempotencyConflict("again"), 409, {}),
        (errors.RequestTooLarge("big"), 413, {"connection": "close"}),
        (errors.RangeNotSatisfiable(10), 416, {"content-range": "bytes */10"}),
        (errors.TooManyRequests("wait", retry_after_s=7), 429, {"retry-after": "7"}),
        (errors.StorageError("disk"), 500, {}),
        (errors.BackendUnavailable("redis"), 503, {"retry-after": "5"}),
    ],
)
def test_an_error_renders_with_its_own_status_and_headers(
    error: errors.WanserveError, status: int, headers: dict[str, str]
) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert {name: response.headers[name] for name in headers} == headers
    body = json.loads(response.body)
    assert body == {
        "error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    }
    assert json.loads(error_bytes(error)) == body


def test_a_cancel_is_not_a_client_error() -> None:
    assert not issubclass(errors.GenerationCancelled, errors.WanserveError)
