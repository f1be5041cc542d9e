"""The API's Prometheus metrics: HTTP requests counted in this process, fleet state read from Redis.

Exposed on ``GET /metrics``:

- ``wanserve_http_requests_total{route,method,status}`` and ``wanserve_http_request_seconds{route}``
  (histogram), counted by :class:`MetricsMiddleware`. ``route`` is the matched route's path template
  (``/v1/videos/{video_id}``), never the raw path; a path that matches no route is ``unmatched``, and a
  method outside the standard ones is ``other``, so no client can grow the label sets.
- ``wanserve_queue_length``, ``wanserve_jobs_running``, ``wanserve_workers{state}``,
  ``wanserve_videos_total{status}`` and ``wanserve_redis_up``, read from Redis at scrape time by
  :class:`RedisStateCollector`: the same values from every API replica and every process.

Several API processes on one host (``uvicorn --workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory in the environment the processes start from (a start-up script, before Python starts;
wipe it at every start). Then prometheus-client keeps each process's HTTP counters in files there and a
scrape of any process sums them all (``MultiProcessCollector``); the Redis-read metrics are computed by
the process answering the scrape, as they are not per process. The HTTP metrics are counters and
histograms only, so the files of a process that died still count rightly (no ``mark_process_dead``).
Without the variable each process counts alone, which is right for one process per container.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import StartedJobRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.video_counts import ended_counts
from service.core.worker_registry import counts_by_state

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

HTTP_REGISTRY = CollectorRegistry()
"""This process's HTTP metrics (in multiprocess mode their values live in the directory's files)."""

HTTP_REQUESTS = Counter(
    "wanserve_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_SECONDS = Histogram(
    "wanserve_http_request_seconds",
    "Time from a request's arrival to the end of its response, by route template.",
    ["route"],
    buckets=HTTP_BUCKETS,
    registry=HTTP_REGISTRY,
)


def route_label(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``.

    Routers must carry their prefix themselves (``APIRouter(prefix="/v1")``, as ours do): FastAPI puts the
    route itself in the scope, and a prefix given only to ``include_router`` is not part of its template.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP request by route, method and status, and times it to the end of its
    response (a download: until its last byte is handed to the server)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before its response starts

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = route_label(scope)
            HTTP_REQUESTS.labels(route, method_label(scope["method"]), str(status)).inc()
            HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


class RedisStateCollector(Collector):
    """Fleet state read from Redis at scrape time: the same answer from every API process."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_key = Queue(queue_name, connection=redis).key
        self.started_key = StartedJobRegistry(queue_name, connection=redis).key

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.llen(self.queue_key)
                # RQ scores a started job by when its heartbeat expires: expired ones are not running.
                pipe.zcount(self.started_key, time.time(), "+inf")
                queued, running = cast(list[int], pipe.execute())
            state = _FleetState(queued, running, counts_by_state(self.redis), ended_counts(self.redis))
        except RedisError:
            return self._families(None, redis_up=False)
        return self._families(state, redis_up=True)

    @staticmethod
    def _families(state: _FleetState | None, redis_up: bool | None = None) -> list[Metric]:
        """The metric families, with samples from ``state`` (none to describe them, or without Redis)."""
        queue = GaugeMetricFamily("wanserve_queue_length", "Jobs waiting in the queue.")
        jobs = GaugeMetricFamily("wanserve_jobs_running", "Jobs a worker has started and is running.")
        by_state = GaugeMetricFamily("wanserve_workers", "Live workers by state.", labels=["state"])
        videos = CounterMetricFamily(
            "wanserve_videos", "Videos ended, by final status (all API replicas).", labels=["status"]
        )
        up = GaugeMetricFamily("wanserve_redis_up", "1 when this scrape could read Redis, else 0.")
        if redis_up is not None:
            up.add_metric([], 1 if redis_up else 0)
        if state is not None:
            queue.add_metric([], state.queued)
            jobs.add_metric([], state.running)
            for worker_state, count in state.workers.items():
                by_state.add_metric([worker_state], count)
            for final, count in state.ended.items():
                videos.add_metric([final], count)
        return [queue, jobs, by_state, videos, up]


@dataclass(frozen=True)
class _FleetState:
    queued: int
    running: int
    workers: dict[str, int]
    ended: dict[str, int]


def metrics_registry(redis: Redis, queue_name: str) -> CollectorRegistry:
    """What ``/metrics`` exposes: this process's (or, in multiprocess mode, every process's) HTTP metrics
    and the state read from Redis."""
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(HTTP_REGISTRY)
    registry.register(RedisStateCollector(redis, queue_name))
    return registry


def install_metrics(app: FastAPI, redis: Redis, queue_name: str) -> CollectorRegistry:
    """Count the app's requests and serve ``GET /metrics`` (unauthenticated, as scrapers expect; it
    names no host, key or video). Call it after every other ``add_middleware``, so that it sees what
    they answer too (a 413 or 408 of the body limit)."""
    registry = metrics_registry(redis, queue_name)

    def metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), media_type=content_type)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(MetricsMiddleware)
    return registry
