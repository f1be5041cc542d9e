"""What every request handler needs, built once per process and typed as ``Annotated`` dependencies."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from redis import Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from service.api.admission import IdempotencyKeys
from service.api.auth import ApiKeys
from service.api.events import VideoEvents
from service.api.read_cache import ReadCache
from service.core import redis_keys
from service.core.errors import BackendUnavailable
from service.core.model_profile import ModelProfile, resolve_profile
from service.core.settings import Settings
from service.core.storage import Storage, storage_from_settings
from service.core.video_store import VideoStore
from service.core.worker_registry import WorkerState, served_models

log = logging.getLogger("wanserve.api")

SERVED_MODELS_TTL_S = 1.0
ASYNC_REDIS_CONNECTIONS = 32
"""Redis connections of one API process's async reads (status, list, event streams), however many wait."""
SERVING = {WorkerState.LOADING.value, WorkerState.IDLE.value, WorkerState.BUSY.value}

_REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 30,
}


@dataclass
class AppContext:
    settings: Settings
    redis: Redis
    store: VideoStore
    storage: Storage
    api_keys: ApiKeys
    idempotency: IdempotencyKeys
    _profile: ModelProfile | None = field(default=None)
    _async: tuple[asyncio.AbstractEventLoop, AsyncRedis] | None = field(default=None)
    _events: tuple[asyncio.AbstractEventLoop, VideoEvents] | None = field(default=None)
    _served: tuple[float, set[str]] = field(default=(-math.inf, set()))
    _refreshing: tuple[asyncio.AbstractEventLoop, asyncio.Future[set[str]]] | None = field(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        redis = Redis.from_url(settings.require_redis_url(), **_REDIS_OPTIONS)
        return cls(
            settings=settings,
            redis=redis,
            store=VideoStore(redis, settings.queue),
            storage=storage_from_settings(settings),
            api_keys=ApiKeys.load(settings.api_keys, settings.api_keys_file),
            idempotency=IdempotencyKeys(redis),
        )

    def redis_async(self) -> AsyncRedis:
        """The asyncio client of the running event loop, for the routes that read (status, list).

        Its connections belong to that loop. A server runs one loop per process; a test client without
        its lifespan runs each request in a new one, and gets a new client.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            # A burst of requests past the pool's size waits for a connection (up to the socket timeout)
            # rather than failing with "Too many connections": one round trip each, they come back fast.
            pool = AsyncBlockingConnectionPool.from_url(
                self.settings.require_redis_url(),
                max_connections=ASYNC_REDIS_CONNECTIONS,
                timeout=_REDIS_OPTIONS["socket_timeout"],
                **_REDIS_OPTIONS,
            )
            self._async = (loop, AsyncRedis.from_pool(pool))
        return self._async[1]

    def video_events(self) -> VideoEvents:
        """The event loop's subscription to video events (see :mod:`service.api.events`), on a client of
        its own: a subscription waits on its connection for as long as there is nothing to say, which the
        read client's socket timeout would cut."""
        loop = asyncio.get_running_loop()
        if self._events is None or self._events[0] is not loop:
            client = AsyncRedis.from_url(
                self.settings.require_redis_url(),
                socket_connect_timeout=_REDIS_OPTIONS["socket_connect_timeout"],
                socket_keepalive=True,
            )
            self._events = (loop, VideoEvents(client, ReadCache(self.settings.read_cache_s)))
        return self._events[1]

    def read_cache(self) -> ReadCache | None:
        """This process's cache of status reads and list pages (None when ``WANSERVE_READ_CACHE_S`` is 0);
        it serves once the video events subscription is up."""
        if self.settings.read_cache_s <= 0:
            return None
        events = self.video_events()
        events.start()
        return events.cache

    def forget_read(self, video_id: str) -> None:
        """This process changed a video: its next read goes to Redis (the announcement may come later)."""
        if self._events is not None:
            self._events[1].cache.forget(video_id)

    async def close_async(self) -> None:
        """Close the asyncio clients (at the lifespan's end, in their loop)."""
        loop = asyncio.get_running_loop()
        if self._async is not None and self._async[0] is loop:
            await self._async[1].aclose()
        if self._events is not None and self._events[0] is loop:
            await self._events[1].close()
        self._async = None
        self._events = None

    def served_models(self) -> set[str]:
        """The models a live worker serves or loads; the registry is read at most once a second."""
        if time.monotonic() - self._served[0] > SERVED_MODELS_TTL_S:
            models = {served["model"]: served["workers"] for served in served_models(self.redis)}
            self._served = (
                time.monotonic(),
                {name for name, states in models.items() if states.keys() & SERVING},
            )
        return self._served[1]

    async def served_models_async(self) -> set[str]:
        """The same, for the async routes: a stale answer is refreshed in a thread, off the event loop, once
        for all the requests that find it stale together (not a thread each)."""
        if time.monotonic() - self._served[0] <= SERVED_MODELS_TTL_S:
            return self._served[1]
        loop = asyncio.get_running_loop()
        if self._refreshing is None or self._refreshing[0] is not loop or self._refreshing[1].done():
            self._refreshing = (loop, asyncio.ensure_future(run_in_threadpool(self.served_models)))
        return await asyncio.shield(self._refreshing[1])

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


def context_of(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def owner_of(request: Request) -> str:
    """Who is asking: the API key's owner id (401 without a valid key when keys are configured)."""
    return context_of(request).api_keys.owner(request.headers.get("authorization"))


# The dependencies are coroutines only so that they run on the event loop, not in a thread: they compute.
# The routes clients poll call the functions above directly: FastAPI's dependency solving costs a status
# read about a quarter of its time.
async def get_context(request: Request) -> AppContext:
    return context_of(request)


Context = Annotated[AppContext, Depends(get_context)]


async def get_owner(request: Request) -> str:
    return owner_of(request)


Owner = Annotated[str, Depends(get_owner)]
