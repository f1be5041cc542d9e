"""What every request handler needs, built once per process and typed as ``Annotated`` dependencies."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, Request
from redis import Redis

from service.api.admission import IdempotencyKeys
from service.api.auth import ApiKeys
from service.core import redis_keys
from service.core.errors import BackendUnavailable
from service.core.model_profile import ModelProfile, resolve_profile
from service.core.settings import Settings
from service.core.storage import LocalStorage
from service.core.video_store import VideoStore

log = logging.getLogger("wanserve.api")


@dataclass
class AppContext:
    settings: Settings
    redis: Redis
    store: VideoStore
    storage: LocalStorage
    api_keys: ApiKeys
    idempotency: IdempotencyKeys
    _profile: ModelProfile | None = field(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        if not settings.redis_url:
            raise ValueError("WANSERVE_REDIS_URL is not set (use `wanserve dev` for an embedded Redis)")
        redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        return cls(
            settings=settings,
            redis=redis,
            store=VideoStore(redis, settings.queue),
            storage=LocalStorage(settings.videos_dir),
            api_keys=ApiKeys.load(settings.api_keys, settings.api_keys_file),
            idempotency=IdempotencyKeys(redis),
        )

    def profile(self) -> ModelProfile:
        """The served model's profile; cached once known (workers may register it after the API starts)."""
        if self._profile is None:
            raw = cast(dict[bytes, bytes], self.redis.hgetall(redis_keys.MODEL_REGISTRY_KEY))
            registered = {name.decode(): profile.decode() for name, profile in raw.items()}
            try:
                self._profile = resolve_profile(self.settings.model, self.settings.model_name, registered)
            except FileNotFoundError as exc:
                raise BackendUnavailable(str(exc), code="model_unknown") from exc
        return self._profile


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


Context = Annotated[AppContext, Depends(get_context)]


def get_owner(request: Request, context: Context) -> str:
    """Who is asking: the API key's owner id (401 without a valid key when keys are configured)."""
    return context.api_keys.owner(request.headers.get("authorization"))


Owner = Annotated[str, Depends(get_owner)]
