"""``/v1/videos``: create, retrieve, list, delete, download."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.errors import InvalidRequest, VideoNotFound, VideoNotReady
from service.http.context import AppContext, Context
from service.jobs import VideoStatus
from service.schemas import CreateVideoRequest, parse_create_request, resolve_params
from service.storage import VARIANT_FILES
from service.video_store import Record
from service.views import POLL_AFTER_MS, video_object

router = APIRouter(prefix="/v1")

_CREATE_SCHEMA = CreateVideoRequest.model_json_schema()
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _CREATE_SCHEMA},
            "multipart/form-data": {"schema": _CREATE_SCHEMA},
            "application/x-www-form-urlencoded": {"schema": _CREATE_SCHEMA},
        },
    }
}


@router.post("/videos", openapi_extra=_CREATE_BODY, summary="Create a video")
async def create_video(request: Request, context: Context, response: Response) -> dict[str, Any]:
    body = await _read_body(request)
    create = parse_create_request(body)
    profile = await run_in_threadpool(context.profile)
    params = resolve_params(
        create,
        profile,
        max_prompt_chars=context.settings.max_prompt_chars,
        max_steps=context.settings.max_steps,
    )
    record = await run_in_threadpool(
        context.store.create,
        params,
        model=profile.name,
        job_timeout_s=context.settings.job_timeout_s,
        result_ttl_s=context.settings.result_ttl_s,
        retries=context.settings.job_retries,
    )
    response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS[VideoStatus.QUEUED])
    return video_object(record, VideoStatus.QUEUED, None, None)


@router.get("/videos", summary="List videos")
def list_videos(
    context: Context,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    ids, has_more = context.store.list_ids(after=after, limit=limit, order=order)
    data = []
    for video_id in ids:
        try:
            data.append(_view(context, context.store.get(video_id)))
        except VideoNotFound:
            continue  # deleted between the index read and the record read
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/videos/{video_id}", summary="Retrieve a video")
def retrieve_video(video_id: str, context: Context, response: Response) -> dict[str, Any]:
    view = _view(context, context.store.get(video_id))
    poll_after = POLL_AFTER_MS.get(VideoStatus(view["status"]))
    if poll_after is not None:
        response.headers["openai-poll-after-ms"] = str(poll_after)
    return view


@router.delete("/videos/{video_id}", summary="Delete a video (cancels it if queued or running)")
def delete_video(video_id: str, context: Context) -> dict[str, Any]:
    context.store.delete(video_id)
    context.storage.delete(video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@router.get(
    "/videos/{video_id}/content",
    summary="Download the MP4 (Range and ETag supported), or its thumbnail or spritesheet",
    response_class=FileResponse,
)
def download_content(
    video_id: str,
    request: Request,
    context: Context,
    variant: Literal["video", "thumbnail", "spritesheet"] = "video",
) -> Response:
    record = context.store.get(video_id)
    status, _ = context.store.public_status(record)
    if status != VideoStatus.COMPLETED:
        raise VideoNotReady(
            f"Video '{video_id}' is {status.value}; its content is available once it is completed.",
            param="video_id",
        )
    path = context.storage.path(video_id, variant)
    if not path.is_file():
        raise (
            VideoNotFound(video_id)
            if variant == "video"
            else InvalidRequest(
                f"No {variant} was stored for video '{video_id}'.", param="variant", code="variant_not_found"
            )
        )
    digest = (record.get("files") or {}).get(variant)
    etag = f'"{digest}"' if digest else None
    if etag and etag in _if_none_match(request):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"Cache-Control": "private, max-age=86400"}
    if etag:
        headers["ETag"] = etag
    return FileResponse(path, media_type=VARIANT_FILES[variant][1], headers=headers)


def _view(context: AppContext, record: Record) -> dict[str, Any]:
    status, error = context.store.public_status(record)
    position = context.store.queue_position(record["id"]) if status == VideoStatus.QUEUED else None
    return video_object(record, status, error, position)


async def _read_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart from the client
            raise InvalidRequest(f"Could not parse the form body: {exc}", code="invalid_body") from exc
        body: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                raise InvalidRequest(
                    f"File uploads ('{key}') are not supported: this server does text-to-video only.",
                    param=key,
                    code="unsupported_parameter",
                )
            body[key] = value
        return body
    raw = await request.body()
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise InvalidRequest(
            f"Unsupported content type '{content_type}'; send JSON or multipart/form-data.",
            code="unsupported_content_type",
        )
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    return body


def _if_none_match(request: Request) -> list[str]:
    header = request.headers.get("if-none-match", "")
    return [tag.strip() for tag in header.split(",") if tag.strip()]
