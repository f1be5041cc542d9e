"""The FastAPI application. Importing this module must not import torch, diffusers or the worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.api import error_handlers
from service.api.body_limit import BodyLimitMiddleware
from service.api.cleaner import run_cleaner
from service.api.context import AppContext, Context
from service.api.routes_videos import router as videos_router
from service.api.webhooks import WebhookSender
from service.core.settings import Settings, get_settings

log = logging.getLogger("wanserve.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    context = AppContext.from_settings(settings)

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
        if settings.webhook_secret:
            sender = WebhookSender(
                context.redis, settings.webhook_secret, allow_private=settings.webhook_allow_private
            )
            threading.Thread(
                target=sender.run_forever, args=(stop,), name="webhook-sender", daemon=True
            ).start()
        yield
        stop.set()

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
    app.include_router(videos_router)

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis is reachable", responses={503: {"description": "Redis unreachable"}})
    def readyz(context: Context) -> Any:
        try:
            context.redis.ping()
        except RedisError as exc:
            # Where Redis lives is the operator's business, not an anonymous prober's: logged, not shown.
            log.warning("not ready: Redis unavailable (%s)", exc)
            return JSONResponse({"status": "unavailable", "redis": "unreachable"}, status_code=503)
        return {"status": "ready"}

    @app.get("/v1/models", summary="The model this server generates with")
    def list_models(context: Context) -> dict[str, Any]:
        profile = context.profile()
        return {
            "object": "list",
            "data": [{"id": profile.name, "object": "model", "owned_by": "wanserve", **profile.to_json()}],
        }

    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory service.api.app:app_factory``."""
    return create_app()
