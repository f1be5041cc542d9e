"""One validated settings class, read from ``WANSERVE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    keepalive_s: float | None = Field(
        default=None,
        gt=0,
        description="Worker group: idle ping interval (default: 60 s, at most half the timeout).",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or npu.")
    dtype: str = Field(default="auto", description="auto, float32, bfloat16 or float16.")

    @field_validator(
        "redis_url",
        "model",
        "model_name",
        "storage_dir",
        "api_keys",
        "api_keys_file",
        "webhook_secret",
        "webhook_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose and Kubernetes pass unset variables as empty strings.
        return None if value == "" else value

    @model_validator(mode="after")
    def _keepalive_within_timeout(self) -> Settings:
        if self.keepalive_s is not None and self.keepalive_s >= 2 * self.dist_timeout_s:
            raise ValueError(
                "keepalive_s must be shorter than twice dist_timeout_s, or idle followers time out"
            )
        return self

    @property
    def keepalive_interval_s(self) -> float:
        return self.keepalive_s if self.keepalive_s is not None else min(60.0, self.dist_timeout_s / 2)

    @property
    def videos_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "videos"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
