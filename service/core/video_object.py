"""The public video object: the OpenAI Videos API shape plus our extension fields."""

from __future__ import annotations

from typing import Any

from service.core.cache import cache_report
from service.core.lifecycle import VideoStatus
from service.core.schemas import GenerationParams
from service.core.video_store import Record

POLL_AFTER_MS = {VideoStatus.QUEUED: 1000, VideoStatus.IN_PROGRESS: 500}


def video_object(
    record: Record,
    status: VideoStatus,
    error: dict[str, Any] | None,
    queue_position: int | None,
    result_ttl_s: int | None = None,
) -> dict[str, Any]:
    params = GenerationParams.from_json(record["params"])
    progress = 100 if status == VideoStatus.COMPLETED else int(record.get("progress", 0))
    return {
        "id": record["id"],
        "object": "video",
        "model": record["model"],
        "status": status.value,
        "progress": progress,
        "stage": record.get("stage"),
        "queue_position": queue_position,
        "created_at": int(record["created_at"]),
        "started_at": _int_or_none(record.get("started_at")),
        "completed_at": _int_or_none(record.get("completed_at")),
        "expires_at": _expires_at(record, status, result_ttl_s),
        "error": error,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "size": params.size,
        "seconds": params.seconds,
        "width": params.width,
        "height": params.height,
        "num_frames": params.num_frames,
        "fps": params.fps,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "seed": params.seed,
        "stage_durations": record.get("timings") or {},
        "inference_time_s": record.get("inference_time_s"),
        "peak_memory_mb": record.get("peak_memory_mb"),
        "worker": record.get("worker"),
        "parallel": record.get("parallel"),
        # What the worker ran, once it reports; until then what the request asked for.
        "cache": record.get("cache") or cache_report(params.cache),
        "remixed_from_video_id": None,
    }


def _expires_at(record: Record, status: VideoStatus, result_ttl_s: int | None) -> int | None:
    """When the expiry cleaner removes an ended video."""
    ended = record.get("completed_at")
    if result_ttl_s is None or ended is None or not status.is_terminal:
        return None
    return int(ended + result_ttl_s)


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None
