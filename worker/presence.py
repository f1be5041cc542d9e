"""What the fleet sees of a worker: its entry in the Redis registry (state, model, layout), its metrics
and its probes. One per worker process, or per group on its rank 0; announced before the model loads,
so an operator sees ``loading`` (and ``/readyz`` says not ready) while the weights load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from service.core.model_profile import ModelProfile
from service.core.settings import Settings
from service.core.worker_registry import WorkerInfo, WorkerRegistration, WorkerState
from worker.metrics import ProbeServer, WorkerMetrics, WorkerReadiness, start_probe_server

_LOADED_LAYOUT_KEYS = ("attention_backend", "compile")
"""What the engine's layout adds to the announced one (ranks, ulysses, cfg) once the model is loaded."""


class WorkerPresence:
    def __init__(
        self, settings: Settings, redis: Redis, name: str, model: str, layout: Mapping[str, int]
    ) -> None:
        info = WorkerInfo(model=model, parallel=dict(layout), device=settings.device)
        self.registration = WorkerRegistration(redis, name, info, ttl_s=settings.heartbeat_ttl_s)
        self.metrics = WorkerMetrics(model, layout)
        self.readiness = WorkerReadiness(redis)
        self._metrics_port = settings.metrics_port
        self._probes: ProbeServer | None = None

    def announce(self) -> WorkerPresence:
        """Register as ``loading`` and start the heartbeat and the probes.

        Raises:
            SettingsError: the metrics port cannot be bound.
        """
        self._probes = start_probe_server(self._metrics_port, self.metrics.registry, self.readiness)
        self.registration.set_state(WorkerState.LOADING)
        self.registration.start_heartbeat()
        return self

    def loaded(self, profile: ModelProfile, layout: Mapping[str, Any]) -> None:
        """Ready: the device, the attention backend and compile mode (known once loaded) join the info."""
        parallel = dict(self.registration.info.parallel)
        parallel.update({key: layout[key] for key in _LOADED_LAYOUT_KEYS if key in layout})
        self.registration.update_info(
            device=str(layout.get("device", "cpu")), parallel=parallel, profile=profile.to_json()
        )
        self.metrics.set_model_loaded(True)
        self.readiness.model_loaded = True
        self.registration.set_state(WorkerState.IDLE)

    def busy(self, video_id: str) -> None:
        self.registration.set_state(WorkerState.BUSY, video_id)

    def idle(self) -> None:
        self.registration.set_state(WorkerState.DRAINING if self.readiness.draining else WorkerState.IDLE)

    def draining(self) -> None:
        self.readiness.draining = True
        self.registration.set_state(WorkerState.DRAINING)

    def close(self) -> None:
        self.registration.remove()
        if self._probes is not None:
            self._probes.close()
