"""A worker's Prometheus metrics and its probes, served on ``WANSERVE_METRICS_PORT`` (0: off).

One server per worker group, on its rank 0, answering:

- ``/metrics``: ``wanserve_stage_seconds{stage}`` (queue_wait, text_encode, denoise, vae_decode, encode,
  store), ``wanserve_denoise_step_seconds``, ``wanserve_jobs_total{status}``,
  ``wanserve_cache_skipped_ratio``, ``wanserve_peak_memory_bytes`` and ``wanserve_model_loaded``, each
  labelled with ``model`` and ``layout`` (``ulysses2-cfg1``);
- ``/healthz``: 200 while the process is up;
- ``/readyz``: 200 when the readiness callback says every check passed (model loaded, Redis reachable,
  not draining), else 503 with a JSON body naming the checks that failed.

Standard library and prometheus-client only: the worker never imports FastAPI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from redis import Redis
from redis.exceptions import RedisError

from service.core.settings import SettingsError

log = logging.getLogger("wanserve.worker")

STAGES = ("queue_wait", "text_encode", "denoise", "vae_decode", "encode", "store")
"""The stages timed, as ``<stage>_s`` keys in a job's timings (``VideoJobRunner``)."""
JOB_STATUSES = ("completed", "failed", "cancelled", "deleted", "retried")
"""How a job ended for this worker (``retried``: its group failed and the job went back on the queue)."""

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

Readiness = Callable[[], Mapping[str, bool]]
"""Returns each readiness check by name (True: passed)."""


def layout_label(layout: Mapping[str, Any]) -> str:
    """``{"ulysses": 2, "cfg": 1, ...}`` -> ``ulysses2-cfg1`` (the ranks are their product)."""
    return f"ulysses{int(layout.get('ulysses', 1))}-cfg{int(layout.get('cfg', 1))}"


def skipped_ratio(cache: Mapping[str, Any] | None) -> float | None:
    """The share of transformer block evaluations a feature cache skipped, from a job's cache report
    (``service.core.cache.cache_report``); None without one or before the worker counted."""
    if not cache:
        return None
    computed, skipped = cache.get("blocks_computed"), cache.get("blocks_skipped")
    if computed is None or skipped is None or computed + skipped == 0:
        return None
    return float(skipped) / float(computed + skipped)


class StepClock:
    """Times denoising steps from the job's step callbacks: :meth:`start` when denoising starts (the
    ``denoise`` stage), :meth:`lap` after each step; :attr:`laps` then holds each step's seconds."""

    def __init__(self) -> None:
        self.laps: list[float] = []
        self._last: float | None = None

    def start(self) -> None:
        self.laps = []
        self._last = time.perf_counter()

    def lap(self, *_: object) -> None:
        """Accepts and ignores the callback's (steps done, total)."""
        now = time.perf_counter()
        if self._last is not None:
            self.laps.append(now - self._last)
        self._last = now


class WorkerMetrics:
    """One worker's metrics, in a registry of their own, every series labelled with the worker's model
    and parallel layout."""

    def __init__(
        self, model: str, layout: Mapping[str, Any] | str, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model = model
        self.layout = layout if isinstance(layout, str) else layout_label(layout)
        common = ["model", "layout"]
        self._stage = Histogram(
            "wanserve_stage_seconds",
            "Seconds a job spent in each stage.",
            ["stage", *common],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self._step = Histogram(
            "wanserve_denoise_step_seconds",
            "Seconds per denoising step.",
            common,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._jobs = Counter(
            "wanserve_jobs", "Jobs this worker ended, by status.", ["status", *common], registry=self.registry
        )
        self._skipped = Histogram(
            "wanserve_cache_skipped_ratio",
            "Share of transformer block evaluations a job's feature cache skipped.",
            common,
            buckets=RATIO_BUCKETS,
            registry=self.registry,
        )
        self._peak = Gauge(
            "wanserve_peak_memory_bytes",
            "Peak memory of the last job: the accelerator's, or the process's peak RSS on a CPU worker.",
            common,
            registry=self.registry,
        )
        self._loaded = Gauge(
            "wanserve_model_loaded", "1 once the model is loaded.", common, registry=self.registry
        )
        labels = (self.model, self.layout)
        # Every series exists from the start (at zero), so rates and ratios need no "absent" special case.
        for stage in STAGES:
            self._stage.labels(stage, *labels)
        for status in JOB_STATUSES:
            self._jobs.labels(status, *labels)
        self._step.labels(*labels)
        self._skipped.labels(*labels)
        self._peak.labels(*labels)
        self._loaded.labels(*labels).set(0)

    def set_model_loaded(self, loaded: bool) -> None:
        self._loaded.labels(self.model, self.layout).set(1 if loaded else 0)

    def record_job(
        self,
        timings: Mapping[str, float],
        status: str,
        *,
        skipped_ratio: float | None = None,
        peak_memory_bytes: float | None = None,
        step_seconds: Iterable[float] = (),
    ) -> None:
        """Record one ended job.

        Args:
            timings: the job's stage timings, ``<stage>_s`` keys (``queue_wait_s``, ``text_encode_s``,
                ``denoise_s``, ``vae_decode_s``, ``encode_s``, ``store_s``); other keys are ignored, and
                stages a job did not reach are not observed.
            status: one of :data:`JOB_STATUSES`; anything else is logged and counted as ``failed``.
            skipped_ratio: :func:`skipped_ratio` of the job's cache report, if it ran with a cache.
            peak_memory_bytes: the job's peak accelerator memory, if measured.
            step_seconds: each denoising step's seconds (:class:`StepClock`).
        """
        labels = (self.model, self.layout)
        for stage in STAGES:
            seconds = timings.get(f"{stage}_s")
            if seconds is not None and seconds >= 0:
                self._stage.labels(stage, *labels).observe(seconds)
        if status not in JOB_STATUSES:
            log.warning("job status %r is not one of %s; counted as failed", status, JOB_STATUSES)
            status = "failed"
        self._jobs.labels(status, *labels).inc()
        for seconds in step_seconds:
            self._step.labels(*labels).observe(seconds)
        if skipped_ratio is not None:
            self._skipped.labels(*labels).observe(min(1.0, max(0.0, skipped_ratio)))
        if peak_memory_bytes is not None:
            self._peak.labels(*labels).set(peak_memory_bytes)


class WorkerReadiness:
    """The worker's readiness checks, as :class:`ProbeServer` asks them: model loaded, Redis reachable,
    not draining. The serving loop sets :attr:`model_loaded` and :attr:`draining`."""

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self.model_loaded = False
        self.draining = False

    def __call__(self) -> dict[str, bool]:
        return {
            "model_loaded": self.model_loaded,
            "redis": self._redis_answers(),
            "not_draining": not self.draining,
        }

    def _redis_answers(self) -> bool:
        if self.redis is None:
            return False
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread.

    Args:
        port: the TCP port; 0 picks a free one (:attr:`port` says which). For ``WANSERVE_METRICS_PORT``,
            where 0 means off, use :func:`start_probe_server`.
        registry: the metrics to expose.
        readiness: the checks ``/readyz`` asks.
        host: the address to listen on (all interfaces by default: probes come from outside the pod).
    """

    def __init__(
        self, port: int, registry: CollectorRegistry, readiness: Readiness, host: str = "0.0.0.0"
    ) -> None:
        self._server = _ProbeHTTPServer((host, port), _ProbeHandler)
        self._server.registry = registry
        self._server.readiness = readiness
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="probe-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        log.info("metrics and probes on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_probe_server(
    port: int, registry: CollectorRegistry, readiness: Readiness, host: str = "0.0.0.0"
) -> ProbeServer | None:
    """Serve the worker's metrics and probes on ``port`` (``WANSERVE_METRICS_PORT``); None when 0 (off).

    Raises:
        SettingsError: the port is taken (another worker on this host?) or cannot be bound.
    """
    if port == 0:
        return None
    try:
        server = ProbeServer(port, registry, readiness, host)
    except OSError as exc:
        raise SettingsError(
            f"WANSERVE_METRICS_PORT={port}: cannot listen there ({exc.strerror or exc}); "
            "give each worker on a host its own port, or 0 for none"
        ) from None
    return server.start()


class _ProbeHTTPServer(ThreadingHTTPServer):
    registry: CollectorRegistry
    readiness: Readiness


class _ProbeHandler(BaseHTTPRequestHandler):
    server: _ProbeHTTPServer
    server_version = "wanserve-worker"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._answer(200, encode(self.server.registry), content_type)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            self._ready()
        else:
            self._json(404, {"error": "not found"})

    def _ready(self) -> None:
        try:
            checks = dict(self.server.readiness())
        except Exception:
            log.exception("readiness check failed")
            checks = {"readiness_check": False}
        failed = sorted(name for name, passed in checks.items() if not passed)
        if failed:
            self._json(503, {"status": "unavailable", "checks": checks, "failed": failed})
        else:
            self._json(200, {"status": "ready", "checks": checks})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._answer(status, json.dumps(body).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds: not worth a line each.
        log.debug("probe %s", format % args)
