"""The FastAPI application. Importing this module must not import torch, diffusers or the worker."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError

from service.api import error_handlers
from service.api.body_limit import BodyLimitMiddleware
from service.api.cleaner import run_cleaner
from service.api.context import AppContext, Context, Owner
from service.api.metrics import install_metrics
from service.api.routes_videos import router as videos_router
from service.api.routes_web import router as web_router
from service.api.webhooks import WebhookSender
from service.core.cache import CACHE_CHOICES
from service.core.logs import configure_logging
from service.core.schemas import MAX_GUIDANCE_SCALE, MAX_SECONDS, MAX_SEED
from service.core.settings import Settings, SettingsError, get_settings
from service.core.worker_registry import counts_by_state, live_workers, served_models

log = logging.getLogger("wanserve.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    context = AppContext.from_settings(settings)
    sender = _webhook_sender(context.redis, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        cleaner = threading.Thread(
            target=run_cleaner,
            args=(context.store, context.storage, settings.result_ttl_s, settings.cleanup_interval_s, stop),
            name="expiry-cleaner",
            daemon=True,
        )
        cleaner.start()
        if sender is not None:
            threading.Thread(
                target=sender.run_forever, args=(stop,), name="webhook-sender", daemon=True
            ).start()
        yield
        stop.set()
        await context.close_async()

    app = FastAPI(
        title="wanserve",
        version="0.1.0",
        summary="Text-to-video generation with Wan2.1, OpenAI Videos API compatible.",
        lifespan=lifespan,
        default_response_class=error_handlers.SafeJSONResponse,
    )
    app.state.context = context
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    error_handlers.install(app)
    install_metrics(app, context.redis, settings.queue)  # outermost: it sees the 408s and 413s too
    app.include_router(videos_router)
    app.include_router(web_router)  # the page at / (kept out of the OpenAPI schema)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis is reachable", responses={503: {"description": "Redis unreachable"}})
    def readyz(context: Context) -> Any:
        try:
            workers = counts_by_state(context.redis)
        except RedisError as exc:
            # Where Redis lives is the operator's business, not an anonymous prober's: logged, not shown.
            log.warning("not ready: Redis unavailable (%s)", exc)
            return JSONResponse({"status": "unavailable", "redis": "unreachable"}, status_code=503)
        # Ready to queue with no worker yet (workers may be starting); the counts say who would serve.
        return {"status": "ready", "workers": workers}

    @app.get("/v1/workers", summary="The live workers: state, model, parallel layout, device")
    def list_workers(context: Context, _: Owner) -> dict[str, Any]:
        return {"object": "list", "data": live_workers(context.redis)}

    @app.get("/v1/models", summary="The models live workers serve (with none yet: the configured one)")
    def list_models(context: Context) -> dict[str, Any]:
        served = served_models(context.redis)
        if not served:
            profile = context.profile()
            served = [{"model": profile.name, "profile": profile.to_json(), "parallel": [], "workers": {}}]
        limits = _request_limits(context.settings)
        return {"object": "list", "data": [_model_object(model, limits) for model in served]}

    return app


def _model_object(served: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI model object with the profile's limits and defaults, the server's request limits and
    cache presets, and who serves it (parallel layouts, devices, workers by state)."""
    return {
        "id": served["model"],
        "object": "model",
        "owned_by": "wanserve",
        **(served["profile"] or {}),
        "limits": limits,
        "cache_presets": list(CACHE_CHOICES),
        "parallel": served["parallel"],
        "devices": served.get("devices", []),
        "workers": served["workers"],
    }


def _request_limits(settings: Settings) -> dict[str, Any]:
    """What this server accepts beyond the model's own limits (a form can enforce them as the API does)."""
    return {
        "max_prompt_chars": settings.max_prompt_chars,
        "max_steps": settings.max_steps,
        "max_work": settings.max_work,
        "max_seed": MAX_SEED,
        "max_seconds": MAX_SECONDS,
        "max_guidance_scale": MAX_GUIDANCE_SCALE,
    }


def _webhook_sender(redis: Redis, settings: Settings) -> WebhookSender | None:
    if not settings.webhook_secret:
        return None
    try:
        return WebhookSender(redis, settings.webhook_secret, allow_private=settings.webhook_allow_private)
    except ValueError as exc:  # a malformed secret: refused before the server starts
        raise SettingsError(str(exc)) from None


def server_app(settings: Settings | None = None) -> FastAPI:
    """The app as a server process runs it: built, then all that is alive so far (modules, the app, its
    schemas) frozen out of the garbage collector's sight.

    Unfrozen, every full collection walks all of it: 50-100 ms on a 2-core machine, several times a
    minute under load, the p99 latency of every route.
    """
    app = create_app(settings)
    gc.freeze()
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory service.api.app:app_factory`` (each of ``--workers N``)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return server_app(settings)
