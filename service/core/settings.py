"""One validated settings class, read from ``WANSERVE_*`` environment variables."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REDIS_URL_MISSING = "WANSERVE_REDIS_URL is not set (use `wanserve dev` for an embedded Redis)"


class SettingsError(ValueError):
    """A setting that is missing, malformed or unsafe: the command prints this one line and exits."""


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "wanserve"


class Settings(BaseSettings):
    """Settings shared by the API, the worker and the CLI.

    Every field reads from ``WANSERVE_<FIELD>`` (for example ``WANSERVE_REDIS_URL``).
    """

    model_config = SettingsConfigDict(env_prefix="WANSERVE_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis URL. Unset: `wanserve dev` starts an embedded Redis; other commands need it.",
    )
    model: str | None = Field(
        default=None,
        description=(
            "A local diffusers-format Wan2.1 folder; `tiny-random` for a random-weight tiny model. "
            "Unset: the tiny shapes model that ships with wanserve."
        ),
    )
    model_name: str | None = Field(default=None, description="Name reported in video objects.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Models cache and default storage.")
    storage_dir: Path | None = Field(
        default=None, description="Where MP4s are written (default data_dir/videos)."
    )
    storage_url: str | None = Field(
        default=None,
        description=(
            "Where videos are stored: a folder (`file:///data/videos` or a plain path) or "
            "`s3://bucket/prefix` (AWS_* variables configure the client). Unset: storage_dir."
        ),
    )
    storage_redirect: bool = Field(
        default=False,
        description="S3 only: answer downloads with a 307 to a short-lived presigned URL, not streamed.",
    )
    metrics_port: int = Field(
        default=9400, ge=0, le=65535, description="A worker's metrics and probe port (0: off)."
    )
    log_format: str = Field(default="text", pattern="^(text|json)$", description="text or json.")
    queue: str = Field(default="wanserve", description="RQ queue name shared by the API and the workers.")
    job_timeout_s: int = Field(default=3600, ge=1, description="Longest a single job may run.")
    job_retries: int = Field(
        default=2, ge=0, description="How often a job whose worker died (or whose group failed) is run again."
    )
    heartbeat_ttl_s: int = Field(
        default=60, ge=2, description="A running job whose worker stops beating this long is abandoned."
    )
    reap_interval_s: float = Field(
        default=10, gt=0, description="How often workers look for abandoned jobs to put back on the queue."
    )
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="How long RQ keeps finished jobs.")
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_steps: int = Field(default=100, ge=1)
    max_work: int = Field(
        default=81 * 1280 * 720 * 100,
        ge=1,
        description="Largest frames x pixels x steps one request may ask.",
    )
    shutdown_grace_s: float = Field(
        default=10,
        ge=0,
        description="On SIGTERM, open requests (event streams, downloads) get this long, then are cut.",
    )
    read_cache_s: float = Field(
        default=1.0,
        ge=0,
        description="Status reads and list pages are served from memory until Redis announces a change, "
        "and at most this long (0: off).",
    )
    events_heartbeat_s: float = Field(
        default=15, gt=0, description="An idle event stream sends a comment this often (proxies keep it)."
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted.")
    header_timeout_s: float = Field(
        default=10, gt=0, description="A request's headers must arrive within this long (else 408)."
    )
    body_timeout_s: float = Field(
        default=30, gt=0, description="A request's body must arrive within this long (else 408)."
    )
    max_queue_length: int = Field(
        default=1000, ge=0, description="Past this many waiting jobs: 429 (0: off)."
    )
    rate_limit_per_minute: int = Field(
        default=0, ge=0, description="Creates per API key per minute (0: off)."
    )
    api_keys: str | None = Field(default=None, description="Comma-separated API keys; unset: open API.")
    api_keys_file: Path | None = Field(default=None, description="A file of API keys, one per line.")
    webhook_secret: str | None = Field(
        default=None, description="Signs webhooks (Standard Webhooks): whsec_ + base64 of >= 24 random bytes."
    )
    webhook_url: str | None = Field(default=None, description="Webhook for videos that name none.")
    webhook_allow_private: bool = Field(
        default=False,
        description=(
            "Allow webhooks to loopback, private, link-local and other internal addresses "
            "(off: such targets are refused at create and at delivery)."
        ),
    )
    cleanup_interval_s: float = Field(
        default=60, gt=0, description="How often the API removes expired videos."
    )
    dist_timeout_s: float = Field(
        default=600,
        gt=0,
        description="Worker group: how long a rank waits in a device collective (control plane: twice that).",
    )
    keepalive_s: float = Field(
        default_factory=lambda data: min(60.0, data["dist_timeout_s"] / 2),
        gt=0,
        description="Worker group: idle ping interval (default: 60 s, at most half the timeout).",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or npu.")
    dtype: str = Field(default="auto", description="auto, float32, bfloat16 or float16.")
    npu_ops: Literal["auto", "off", "mindiesd"] = Field(
        default="auto",
        description=(
            "Wan's RoPE, RMSNorm and attention through fused kernels: auto (torch_npu's on an Ascend NPU, "
            "nothing elsewhere), off, or mindiesd (MindIE-SD's ops; needs the package and an NPU)."
        ),
    )
    vae_tiling: Literal["off", "on", "auto"] = Field(
        default="off",
        description=(
            "Decode the VAE in spatial tiles (diffusers' 256 px every 192): on, off, or auto (tiles only "
            "frames larger than 832x480)."
        ),
    )
    vae_parallel: bool = Field(
        default=False,
        description="Worker group: split each tiled VAE decode's tiles over the ranks (on/off).",
    )
    text_encoder_offload: bool = Field(
        default=False,
        description="Keep UMT5 on the CPU between jobs, on the device only to encode (no-op on CPU).",
    )
    attention_backend: str = Field(
        default="auto",
        description=(
            "The transformer's attention: auto (the fastest available: cuDNN/flash SDPA on CUDA, the fused "
            "kernel on Ascend, native on the CPU) or a diffusers backend name, checked at worker start."
        ),
    )
    compile: Literal["none", "blocks", "full"] = Field(
        default="none",
        description=(
            "torch.compile the transformer: none, blocks (its repeated blocks) or full (all of it); "
            "compiled by a warm-up before the worker reports ready."
        ),
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    worker_name: str | None = Field(
        default=None,
        description="The RQ worker's name (set by the group launcher for each incarnation; unset: unique).",
    )

    @field_validator(
        "redis_url",
        "model",
        "model_name",
        "storage_dir",
        "storage_url",
        "api_keys",
        "api_keys_file",
        "webhook_secret",
        "webhook_url",
        "worker_name",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose and Kubernetes pass unset variables as empty strings.
        return None if value == "" else value

    @field_validator("attention_backend", "compile", mode="before")
    @classmethod
    def _lower_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        # Compose and Kubernetes pass unset variables as empty strings: the default then.
        return value.strip().lower() or cls.model_fields[str(info.field_name)].default

    @field_validator("attention_backend")
    @classmethod
    def _backend_name(cls, value: str) -> str:
        # Which names exist and run here is checked by the worker, which has diffusers and the device.
        if not value.replace("_", "").isalnum():
            raise ValueError("must be auto or a diffusers attention backend name (e.g. native, flash)")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _keepalive_within_timeout(self) -> Settings:
        if self.keepalive_s >= 2 * self.dist_timeout_s:
            raise ValueError(
                "WANSERVE_KEEPALIVE_S must be shorter than twice WANSERVE_DIST_TIMEOUT_S, "
                "or idle followers time out"
            )
        return self

    @model_validator(mode="after")
    def _vae_parallel_needs_tiles(self) -> Settings:
        if self.vae_parallel and self.vae_tiling == "off":
            raise ValueError(
                "WANSERVE_VAE_PARALLEL=on splits a tiled decode's tiles over the ranks: "
                "set WANSERVE_VAE_TILING to on or auto"
            )
        return self

    def require_redis_url(self) -> str:
        """The Redis URL, for the commands that cannot run without one."""
        if not self.redis_url:
            raise SettingsError(REDIS_URL_MISSING)
        return self.redis_url

    @property
    def videos_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "videos"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; every problem in it becomes one :class:`SettingsError` line naming the
    variable, e.g. ``WANSERVE_JOB_TIMEOUT_S='abc': Input should be a valid integer``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # A default computed from a field that failed is not a problem of its own.
        problems = [error for error in exc.errors() if error["type"] != "default_factory_not_called"]
        raise SettingsError("; ".join(_describe(error) for error in problems)) from None


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not field:
        return message
    return f"WANSERVE_{field.upper()}={error.get('input')!r}: {message}"


@lru_cache
def get_settings() -> Settings:
    return load_settings()
