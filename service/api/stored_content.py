"""The answer to ``GET``/``HEAD /v1/videos/{id}/content`` from any storage backend (RFC 9110 semantics).

A local file goes through :class:`~service.api.content.StoredFileResponse`; an object in S3 is streamed
through the API (one range at a time), or, with redirects on, a ``GET`` is sent to a short-lived presigned URL
with a 307 (the store then answers Range itself). ETag and 304 are decided here for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from service.api.content import StoredFileResponse, etag_matches, parse_range
from service.api.error_handlers import error_response
from service.core.errors import InvalidRequest, RangeNotSatisfiable, VideoNotFound
from service.core.storage import VARIANT_FILES, LocalStorage, ObjectInfo, Storage

CACHE_CONTROL = "private, max-age=86400"


def content_response(
    request: Request,
    storage: Storage,
    video_id: str,
    variant: str,
    *,
    etag: str | None = None,
    redirect: bool = False,
) -> Response:
    """Serve a stored variant of a completed video.

    Args:
        etag: the quoted ETag to answer with (the video record's SHA-256 of the variant, as the local
            backend has always sent); None: the store's own.
        redirect: answer a ``GET`` with a 307 to a presigned URL where the backend has them.

    Raises:
        VideoNotFound: the video's MP4 is not stored.
        InvalidRequest: the thumbnail or spritesheet is not stored (``variant_not_found``).
        StorageError: the store cannot be read.
    """
    info = storage.stat(video_id, variant)
    if info is None:
        if variant == "video":
            raise VideoNotFound(video_id)
        raise InvalidRequest(
            f"No {variant} was stored for video '{video_id}'.", param="variant", code="variant_not_found"
        )
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag or info.etag}
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    if redirect and request.method == "GET":  # a URL presigned for GET does not answer a HEAD
        url = storage.presigned_url(video_id, variant)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    media_type = VARIANT_FILES[variant][1]
    if isinstance(storage, LocalStorage):
        return StoredFileResponse(storage.path(video_id, variant), media_type=media_type, headers=headers)
    return _streamed(request, storage, video_id, variant, info, headers)


def _streamed(
    request: Request, storage: Storage, video_id: str, variant: str, info: ObjectInfo, headers: dict[str, str]
) -> Response:
    headers = {
        **headers,
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(info.last_modified, usegmt=True),
    }
    status, first, last = 200, 0, info.size - 1
    raw_range = request.headers.get("range")
    if raw_range is not None and _if_range_holds(request.headers, headers):
        ranges = parse_range(raw_range, info.size)
        if ranges == []:
            return error_response(RangeNotSatisfiable(info.size))
        # Several ranges: the whole object (RFC 9110 section 14.2 lets a server ignore Range).
        if ranges is not None and len(ranges) == 1:
            (first, last), status = ranges[0], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
    headers["Content-Length"] = str(last - first + 1)
    media_type = VARIANT_FILES[variant][1]
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    body = storage.open_range(video_id, variant, first, last if status == 206 else None)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


def _if_range_holds(request_headers: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    """``If-Range`` (absent, or our ETag or Last-Modified exactly): only then is ``Range`` honoured."""
    if_range = request_headers.get("if-range")
    return if_range is None or if_range.strip() in (headers["ETag"], headers["Last-Modified"])
