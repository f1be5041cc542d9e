"""Request validation and the public video object (OpenAI Videos API shape, plus our extensions)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from service.core.errors import InvalidRequest
from service.core.model_profile import ModelProfile
from service.core.text import check_body, is_blank

MAX_SEED = 2**32 - 1

# Feature caches (worker/cache). The worker sizes presets to the model's block count, which the API
# does not know; a unit test keeps these names and defaults equal to the worker's.
DIT_CACHE_PRESETS = ("balanced", "fast")
DIT_CACHE_FIELDS = ("step_start", "step_end", "step_interval", "block_start", "block_end")
ADAPTIVE_CACHE_DEFAULTS: dict[str, Any] = {
    "threshold": 0.05,
    "warmup_steps": 1,
    "final_steps": 1,
    "max_consecutive_skips": 2,
}
MAX_ADAPTIVE_THRESHOLD = 10.0
_MAX_CACHE_INT = 10_000
CACHE_CHOICES = ("none", *DIT_CACHE_PRESETS, "adaptive")
_CACHE_HELP = (
    f"must be one of {', '.join(repr(name) for name in CACHE_CHOICES)}, or an object: "
    "DiTCache {step_start, step_end, step_interval, block_start, block_end} or "
    '{"method": "adaptive", threshold, warmup_steps, final_steps, max_consecutive_skips}'
)


def no_cache() -> dict[str, Any]:
    return {"method": "none"}


class CreateVideoRequest(BaseModel):
    """The body of ``POST /v1/videos`` (multipart form fields arrive as strings; pydantic coerces them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1, description="What the video should show.")
    model: str | None = Field(default=None, description="Must name the served model when given.")
    seconds: int | None = Field(
        default=None, ge=1, le=60, description="Clip length; frames = fps x seconds + 1."
    )
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, one of the model's sizes.")
    num_frames: int | None = Field(default=None, ge=1, description="Frame count, 4k+1; overrides seconds.")
    fps: int | None = Field(default=None, ge=1, le=60)
    negative_prompt: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    webhook_url: str | None = Field(
        default=None, description="Receives video.completed / video.failed / video.cancelled, signed."
    )
    cache: str | dict[str, Any] | None = Field(
        default=None,
        description=(
            "Feature cache: 'none' (default), a DiTCache preset ('balanced', 'fast'), 'adaptive', or an "
            "object (a JSON string of one in a form): {step_start, step_end, step_interval, block_start, "
            'block_end} for DiTCache, {"method": "adaptive", "threshold": 0.05, ...} for the adaptive cache.'
        ),
    )

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
        raise PydanticCustomError("cache_type", _CACHE_HELP)


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
    cache: dict[str, Any] = dataclass_field(default_factory=no_cache, hash=False)
    """Resolved by :func:`resolve_cache`: ``{"method": "none"}``, ``{"method": "dit", "preset": name}``,
    ``{"method": "dit", <the five DiTCache fields>}`` or ``{"method": "adaptive", <all four parameters>}``."""

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> str:
        duration = (self.num_frames - 1) / self.fps
        return str(int(duration)) if duration.is_integer() else f"{duration:.3g}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": dict(self.cache)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationParams:
        # Records written before a field existed lack it: it takes its default.
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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
        cache=resolve_cache(request.cache),
    )


def resolve_cache(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """The ``cache`` field in its resolved form (see ``GenerationParams.cache``).

    Validates everything that does not depend on the model; the worker checks ``block_end`` against the
    transformer's block count.

    Raises:
        InvalidRequest: naming ``cache``.
    """
    if value is None:
        return no_cache()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):  # an object sent as a form field
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise _cache_error(f"not valid JSON ({_short(exc, 80)})") from None
        elif text == "none":
            return no_cache()
        elif text in DIT_CACHE_PRESETS:
            return {"method": "dit", "preset": text}
        elif text == "adaptive":
            return {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS}
        else:
            raise _cache_error(f"unknown cache {_short(value)!r}; it {_CACHE_HELP}", code="unknown_cache")
    if not isinstance(value, dict):
        raise _cache_error(_CACHE_HELP)
    method = value.get("method", "dit")
    if method == "none":
        _check_keys(value, ())
        return no_cache()
    if method == "dit":
        return {"method": "dit", **_dit_cache_fields(value)}
    if method == "adaptive":
        return {"method": "adaptive", **_adaptive_cache_fields(value)}
    raise _cache_error(f"unknown method {_short(method)!r}; choose 'dit', 'adaptive' or 'none'")


def _dit_cache_fields(value: dict[str, Any]) -> dict[str, int]:
    _check_keys(value, DIT_CACHE_FIELDS)
    missing = [name for name in DIT_CACHE_FIELDS if name not in value]
    if missing:
        needed = ", ".join(DIT_CACHE_FIELDS)
        raise _cache_error(f"a DiTCache schedule needs {needed}; missing {', '.join(missing)}")
    fields = {name: _cache_int(value, name) for name in DIT_CACHE_FIELDS}
    checks = [
        (fields["step_start"] >= 0, "step_start must be >= 0"),
        (fields["step_end"] >= fields["step_start"], "step_end must be >= step_start"),
        (fields["step_interval"] >= 1, "step_interval must be >= 1"),
        (fields["block_start"] >= 0, "block_start must be >= 0"),
        (fields["block_end"] > fields["block_start"], "block_end must be > block_start"),
    ]
    for ok, message in checks:
        if not ok:
            raise _cache_error(message)
    return fields


def _adaptive_cache_fields(value: dict[str, Any]) -> dict[str, Any]:
    _check_keys(value, tuple(ADAPTIVE_CACHE_DEFAULTS))
    fields = {**ADAPTIVE_CACHE_DEFAULTS, **{k: v for k, v in value.items() if k != "method"}}
    threshold = fields["threshold"]
    # The range check comes first: it also rejects NaN and infinities, and a huge int that
    # math.isfinite() could not convert to a float.
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or not 0 < threshold <= MAX_ADAPTIVE_THRESHOLD
    ):
        raise _cache_error(f"threshold must be a number > 0 and <= {MAX_ADAPTIVE_THRESHOLD:g}")
    resolved: dict[str, Any] = {"threshold": float(threshold)}
    for name in ("warmup_steps", "final_steps", "max_consecutive_skips"):
        resolved[name] = _cache_int(fields, name)
        if resolved[name] < (1 if name == "max_consecutive_skips" else 0):
            raise _cache_error(f"{name} must be >= {1 if name == 'max_consecutive_skips' else 0}")
    return resolved


def _check_keys(value: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - {"method", *allowed})
    if unknown:
        expected = ", ".join(allowed) if allowed else "no other field"
        names = ", ".join(repr(_short(name)) for name in unknown[:5])
        raise _cache_error(f"unknown field {names}; expected {expected}")


def _cache_int(value: dict[str, Any], name: str) -> int:
    number = value[name]
    if not isinstance(number, int) or isinstance(number, bool) or abs(number) > _MAX_CACHE_INT:
        raise _cache_error(f"{name} must be an integer (at most {_MAX_CACHE_INT}), got {_short(number)!r}")
    return number


def _short(value: Any, limit: int = 40) -> Any:
    """A value to quote in an error message, cut short: the body may be a megabyte."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return value
    return text[:limit] + "..."


def _cache_error(detail: str, *, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid 'cache': {detail}.", param="cache", code=code)


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
