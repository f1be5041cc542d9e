"""Request validation and the public video object (OpenAI Videos API shape, plus our extensions)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from service.core.cache import CACHE_DESCRIPTION, CACHE_HELP, NO_CACHE, CacheSpec, resolve_cache
from service.core.errors import InvalidRequest
from service.core.model_profile import ModelProfile
from service.core.text import check_body, is_blank

MAX_SEED = 2**32 - 1
MAX_SECONDS = 60
MAX_GUIDANCE_SCALE = 30.0


class CreateVideoRequest(BaseModel):
    """The body of ``POST /v1/videos`` (multipart form fields arrive as strings; pydantic coerces them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1, description="What the video should show.")
    model: str | None = Field(default=None, description="Must name the served model when given.")
    seconds: int | None = Field(
        default=None, ge=1, le=MAX_SECONDS, description="Clip length; frames = fps x seconds + 1."
    )
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, one of the model's sizes.")
    num_frames: int | None = Field(default=None, ge=1, description="Frame count, 4k+1; overrides seconds.")
    fps: int | None = Field(default=None, ge=1, le=60)
    negative_prompt: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=MAX_GUIDANCE_SCALE)
    webhook_url: str | None = Field(
        default=None, description="Receives video.completed / video.failed / video.cancelled, signed."
    )
    cache: str | dict[str, Any] | None = Field(default=None, description=CACHE_DESCRIPTION)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("prompt must contain some visible text")
        return value

    @field_validator(
        "seconds", "num_frames", "fps", "seed", "num_inference_steps", "guidance_scale", mode="before"
    )
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1; a client that sends a boolean meant something else.
        if isinstance(value, bool):
            raise PydanticCustomError("bool_not_number", "expected a number, got a boolean")
        return value

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_is_a_name_or_an_object(cls, value: Any) -> Any:
        # Checked before the union so that a wrong type is one error naming 'cache', not one per member.
        if value is None or isinstance(value, str | dict):
            return value
        raise PydanticCustomError("cache_type", CACHE_HELP)


@dataclass(frozen=True)
class GenerationParams:
    """Everything the worker needs, fully resolved: nothing is left to a default on the worker side."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    cache: CacheSpec = NO_CACHE
    """Resolved by :func:`service.core.cache.resolve_cache` (sized to the model when it knows the layers)."""

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> str:
        duration = (self.num_frames - 1) / self.fps
        return str(int(duration)) if duration.is_integer() else f"{duration:.3g}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": self.cache.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationParams:
        # Records written before a field existed lack it: it takes its default.
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "cache" in values:
            values["cache"] = CacheSpec.from_json(values["cache"])
        return cls(**values)


def parse_create_request(body: dict[str, Any]) -> CreateVideoRequest:
    """Validate a raw body, turning pydantic's errors into one ``InvalidRequest`` naming the field."""
    check_body(body)
    try:
        return CreateVideoRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"Unknown parameter '{param}'."
            code = "unknown_parameter"
        elif first["type"] == "missing":
            message = f"Missing required parameter '{param}'."
            code = "missing_required_parameter"
        else:
            message = f"Invalid '{param}': {first['msg']}."
            code = "invalid_value"
        raise InvalidRequest(message, param=param, code=code) from None


def resolve_params(
    request: CreateVideoRequest,
    profile: ModelProfile,
    *,
    max_prompt_chars: int,
    max_steps: int,
    max_work: int | None = None,
) -> GenerationParams:
    """Apply the model's defaults and limits; reject (never round) what the model cannot serve."""
    if request.model is not None and request.model != profile.name:
        raise InvalidRequest(
            f"Model '{request.model}' is not served here; this server serves '{profile.name}'.",
            param="model",
            code="model_not_found",
        )
    for field_name in ("prompt", "negative_prompt"):
        text = getattr(request, field_name)
        if text is not None and len(text) > max_prompt_chars:
            raise InvalidRequest(
                f"'{field_name}' is {len(text)} characters; the limit is {max_prompt_chars}.",
                param=field_name,
                code="string_above_max_length",
            )

    size = request.size if request.size is not None else profile.default_size
    if size not in profile.sizes:
        raise InvalidRequest(
            f"Size '{size}' is not supported by {profile.name}; choose one of {', '.join(profile.sizes)}.",
            param="size",
            code="unsupported_size",
        )
    width, height = (int(part) for part in size.split("x"))

    fps = request.fps if request.fps is not None else profile.default_fps
    num_frames = _resolve_frames(request, fps, profile)

    steps = request.num_inference_steps if request.num_inference_steps is not None else profile.default_steps
    if steps > max_steps:
        raise InvalidRequest(
            f"'num_inference_steps' is {steps}; the limit is {max_steps}.",
            param="num_inference_steps",
            code="invalid_value",
        )

    if max_work is not None and num_frames * width * height * steps > max_work:
        raise InvalidRequest(
            f"{num_frames} frames x {width}x{height} x {steps} steps is more work than one request may ask "
            f"({max_work:,} frame-pixel-steps); ask for fewer frames, steps or pixels.",
            param="num_inference_steps",
            code="request_too_large",
        )

    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        num_inference_steps=steps,
        guidance_scale=(
            request.guidance_scale if request.guidance_scale is not None else profile.default_guidance_scale
        ),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        cache=resolve_cache(
            request.cache,
            num_steps=steps,
            num_layers=profile.num_layers,
            calibrations=profile.cache_calibrations,
        ),
    )


def _resolve_frames(request: CreateVideoRequest, fps: int, profile: ModelProfile) -> int:
    seconds = request.seconds if request.seconds is not None else profile.default_seconds
    if request.num_frames is not None:
        frames, param = request.num_frames, "num_frames"
        if request.seconds is not None and request.seconds * fps + 1 != frames:
            raise InvalidRequest(
                f"'seconds' ({request.seconds}) and 'num_frames' ({frames}) disagree at {fps} fps; "
                "send one of them.",
                param="num_frames",
                code="conflicting_parameters",
            )
    else:
        frames, param = seconds * fps + 1, "seconds"
    if (frames - 1) % 4 != 0:
        hint = "" if param == "num_frames" else f" ({seconds} s at {fps} fps)"
        raise InvalidRequest(
            f"Wan2.1 needs a frame count of the form 4k+1; {frames} frames{hint} is not. "
            "Choose fps and seconds so that fps x seconds is a multiple of 4, or set num_frames.",
            param=param,
            code="unsupported_frame_count",
        )
    if frames > profile.max_frames:
        raise InvalidRequest(
            f"{frames} frames is more than {profile.name} can generate ({profile.max_frames}).",
            param=param,
            code="too_many_frames",
        )
    return frames
