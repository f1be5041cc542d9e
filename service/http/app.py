"""The FastAPI application. Importing this module must not import torch, diffusers or the worker."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.http import error_handlers
from service.http.context import AppContext, Context
from service.http.routes_videos import router as videos_router
from service.settings import Settings, get_settings

log = logging.getLogger("wanserve.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="wanserve",
        version="0.1.0",
        summary="Text-to-video generation with Wan2.1, OpenAI Videos API compatible.",
    )
    app.state.context = AppContext.from_settings(settings)
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
            return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
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
    """Entry point for ``uvicorn --factory service.http.app:app_factory``."""
    return create_app()
