"""``/v1/videos``: create, retrieve, list, delete, download."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.admission import check_queue_length, check_rate
from service.api.content import StoredFileResponse
from service.api.context import AppContext, Context, Owner, context_of, owner_of
from service.api.error_handlers import json_bytes
from service.api.events import video_event_stream
from service.api.read_cache import Answer
from service.api.stored_content import content_response
from service.api.webhooks import validate_webhook_url
from service.core.errors import (
    IdempotencyConflict,
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    VideoNotFound,
    VideoNotReady,
)
from service.core.lifecycle import Stage, VideoStatus
from service.core.schemas import CreateVideoRequest, GenerationParams, parse_create_request, resolve_params
from service.core.settings import Settings
from service.core.video_object import POLL_AFTER_MS, video_object
from service.core.video_store import Record, VideoRead, new_video_id
from service.core.webhook_queue import video_ended

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


@router.post(
    "/videos",
    openapi_extra=_CREATE_BODY,
    summary="Create a video",
    responses={401: {}, 409: {}, 413: {}, 429: {}},
)
async def create_video(
    request: Request,
    context: Context,
    owner: Owner,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    body = await _read_body(request)
    create = parse_create_request(body)
    profile = await run_in_threadpool(context.profile)
    settings = context.settings
    params = resolve_params(
        create,
        profile,
        max_prompt_chars=settings.max_prompt_chars,
        max_steps=settings.max_steps,
        max_work=settings.max_work,
    )
    record = await run_in_threadpool(
        _admit_and_create, context, owner, params, profile.name, create, body, idempotency_key
    )
    context.forget_read(record["id"])
    response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS[VideoStatus.QUEUED])
    return _view(context, record)


def _admit_and_create(
    context: AppContext,
    owner: str,
    params: GenerationParams,
    model: str,
    create: CreateVideoRequest,
    body: dict[str, Any],
    idempotency_key: str | None,
) -> Record:
    settings = context.settings
    # The rate limit comes first: replaying an Idempotency-Key is a request like any other.
    check_rate(context.redis, owner, settings.rate_limit_per_minute)
    video_id = new_video_id()
    slot = None
    if idempotency_key:
        earlier = context.idempotency.claim(owner, idempotency_key, body, video_id)
        if earlier is not None:
            return _earlier_record(context, earlier, owner)
        slot = context.idempotency.slot(owner, idempotency_key)
    try:
        return context.store.create(
            params,
            model=model,
            owner=owner,
            job_timeout_s=settings.job_timeout_s,
            result_ttl_s=settings.result_ttl_s,
            retries=settings.job_retries,
            video_id=video_id,
            webhook_url=_webhook_url(create, settings),
            idempotency_slot=slot,
            admit=lambda queued: check_queue_length(queued, settings.max_queue_length),
        )
    except BaseException:
        if idempotency_key:  # nothing was created: a retry with this key may try again
            context.idempotency.release(owner, idempotency_key)
        raise


def _webhook_url(create: CreateVideoRequest, settings: Settings) -> str | None:
    url = create.webhook_url or settings.webhook_url
    if url is None:
        return None
    if not settings.webhook_secret:
        raise InvalidRequest(
            "Webhooks are off on this server (no WANSERVE_WEBHOOK_SECRET); leave out webhook_url.",
            param="webhook_url",
            code="webhooks_disabled",
        )
    return validate_webhook_url(url, allow_private=settings.webhook_allow_private)


def _earlier_record(context: AppContext, video_id: str, owner: str) -> Record:
    """The video an earlier request with the same Idempotency-Key created; if that request is still
    writing it, a 409 at once (a request thread never waits for another)."""
    try:
        return context.store.get(video_id, owner)
    except VideoNotFound:
        raise IdempotencyConflict(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            param="Idempotency-Key",
            code="idempotency_key_in_progress",
        ) from None


# The reads clients poll are coroutines on redis.asyncio, one Redis round trip each, and return their
# JSON response themselves: the view is JSON already, FastAPI's encoding pass would only repeat it. Their
# answers are kept in this process until Redis announces a change (service.api.read_cache).
@router.get("/videos", summary="List videos", response_model=dict[str, Any])
async def list_videos(
    request: Request,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    context, owner = context_of(request), owner_of(request)

    async def read() -> Answer:
        videos, has_more = await context.store.list_async(
            context.redis_async(), owner=owner, after=after, limit=limit, order=order
        )
        served = await context.served_models_async()
        data = [_view_of(context, video, served) for video in videos]
        page = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
        return Answer(json_bytes(page), {}, queued=False)

    cache = context.read_cache()
    answer = await (read() if cache is None else cache.page((owner, after, limit, order), owner, read))
    return Response(answer.body, media_type="application/json", headers=answer.headers)


@router.get("/videos/{video_id}", summary="Retrieve a video", response_model=dict[str, Any])
async def retrieve_video(video_id: str, request: Request) -> Response:
    context, owner = context_of(request), owner_of(request)

    async def read() -> Answer:
        video = await context.store.read_async(context.redis_async(), video_id, owner)
        poll_after = POLL_AFTER_MS.get(video.status)
        headers = {"openai-poll-after-ms": str(poll_after)} if poll_after is not None else {}
        view = _view_of(context, video, await context.served_models_async())
        return Answer(json_bytes(view), headers, queued=video.status == VideoStatus.QUEUED)

    cache = context.read_cache()
    answer = await (read() if cache is None else cache.video(video_id, owner, read))
    return Response(answer.body, media_type="application/json", headers=answer.headers)


@router.get(
    "/videos/{video_id}/events",
    summary="Follow a video: server-sent events, one per change, until it ends",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def video_events(
    video_id: str,
    context: Context,
    owner: Owner,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    redis = context.redis_async()
    await context.store.read_async(redis, video_id, owner)  # an unknown id is a 404, before the stream

    async def read() -> tuple[dict[str, Any], int]:
        video = await context.store.read_async(redis, video_id, owner)
        return _view_of(context, video, await context.served_models_async()), video.version

    stream = video_event_stream(
        context.video_events(),
        video_id,
        read,
        last_event_id=last_event_id,
        heartbeat_s=context.settings.events_heartbeat_s,
    )
    # X-Accel-Buffering: nginx (and proxies that copy it) pass each event on at once.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post("/videos/{video_id}/cancel", summary="Cancel a queued or running video")
def cancel_video(video_id: str, context: Context, owner: Owner) -> dict[str, Any]:
    record = context.store.cancel(video_id, owner)
    context.forget_read(video_id)
    if record["status"] == VideoStatus.CANCELLED:  # a queued video: it ended here, not in a worker
        video_ended(context.redis, record, context.settings.result_ttl_s)
    return _view(context, record)


@router.delete("/videos/{video_id}", summary="Delete a video (cancels it if queued or running)")
def delete_video(video_id: str, context: Context, owner: Owner) -> dict[str, Any]:
    context.store.delete(video_id, owner)
    context.forget_read(video_id)
    context.storage.delete(video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@router.head("/videos/{video_id}/content", include_in_schema=False)
@router.get(
    "/videos/{video_id}/content",
    summary="Download the MP4 (Range and ETag supported; HEAD too), or its thumbnail or spritesheet",
    response_class=StoredFileResponse,
)
def download_content(
    video_id: str,
    request: Request,
    context: Context,
    owner: Owner,
    variant: Literal["video", "thumbnail", "spritesheet"] = "video",
) -> Response:
    record = context.store.get(video_id, owner)
    status, _ = context.store.public_status(record)
    if status != VideoStatus.COMPLETED:
        raise VideoNotReady(
            f"Video '{video_id}' is {status.value}; its content is available once it is completed.",
            param="video_id",
        )
    digest = (record.get("files") or {}).get(variant)
    return content_response(
        request,
        context.storage,
        video_id,
        variant,
        etag=f'"{digest}"' if digest else None,
        redirect=context.settings.storage_redirect,
    )


def _view(context: AppContext, record: Record) -> dict[str, Any]:
    status, error = context.store.public_status(record)
    position = context.store.queue_position(record["id"]) if status == VideoStatus.QUEUED else None
    view = video_object(record, status, error, position, context.settings.result_ttl_s)
    return _with_worker_stage(view, context.served_models())


def _view_of(context: AppContext, video: VideoRead, served: set[str]) -> dict[str, Any]:
    view = video_object(
        video.record, video.status, video.error, video.queue_position, context.settings.result_ttl_s
    )
    return _with_worker_stage(view, served)


def _with_worker_stage(view: dict[str, Any], served: set[str]) -> dict[str, Any]:
    """A queued video whose model no live worker serves (or loads) says so in its stage: it still waits,
    and starts once a worker for it registers."""
    if view["status"] == VideoStatus.QUEUED and view["model"] not in served:
        view["stage"] = Stage.NO_WORKER.value
    return view


async def _read_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except (RequestTooLarge, RequestTimeout):
            raise  # BodyLimitMiddleware answers these (413, 408)
        except Exception as exc:  # malformed multipart from the client
            raise InvalidRequest("Could not parse the form body.", code="invalid_body") from exc
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
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    return body
