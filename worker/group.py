"""One rank of a worker group, as launched by torchrun (``python -m worker.group``).

Rank 0 (the leader) runs the RQ worker. For each job it broadcasts the parameters over the control
plane, runs its share of the denoising, then gathers every rank's outcome. The other ranks (the
followers) wait for commands and run their share. Outcomes decide whether the group can go on: the
same outcome everywhere (success, or the same error with the same message: a cancel, or an abort the
leader decided at a step boundary) leaves it healthy; anything else leaves it in doubt, and every rank
exits non-zero so that the orchestrator restarts it.

Only then, once the ranks agreed, does the leader decode the video alone: a failure there (out of memory
in the VAE, say) is that job's failure, not the group's. With ``WANSERVE_VAE_PARALLEL=on`` every rank joins
a tiled decode (``worker.vae_decode``) at that point, over the device group only (the leader's keep-alive
may use the control plane meanwhile); a rank's decode failure is still the job's alone, shared by every
rank; only a rank lost during it leaves the group in doubt.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from redis import Redis

from service.core.errors import GenerationCancelled
from service.core.logs import configure_logging
from service.core.schemas import GenerationParams
from service.core.settings import Settings, SettingsError, load_settings
from worker.engine import NO_HOOKS, Denoised, GenerationResult, JobHooks, WanEngine
from worker.errors import GenerationAborted, GroupFailed
from worker.parallel import ParallelLayout, ParallelRuntime, init_parallel, leave_group
from worker.presence import WorkerPresence
from worker.serve import announce_presence, load_engine, serve, unique_worker_name

log = logging.getLogger("wanserve.worker")

Outcome = tuple[str, str] | None
"""None for success, else (exception type, message)."""

EXIT_GROUP_IN_DOUBT = 3


def group_in_doubt(outcomes: list[Outcome]) -> bool:
    """Ranks that did not all end the same way (same error, same message) may be out of step."""
    return len(set(outcomes)) > 1


class GroupLeader:
    """Rank 0's engine: the same ``generate`` as ``WanEngine``, run collectively by the whole group."""

    def __init__(self, runtime: ParallelRuntime, engine: WanEngine, keepalive_s: float) -> None:
        self.runtime = runtime
        self.engine = engine
        self.profile = engine.profile
        self.keepalive_s = keepalive_s
        self.in_doubt = False
        self._lock = threading.Lock()
        self._busy = False
        self._stopped = threading.Event()
        self._pinger = threading.Thread(target=self._keep_alive, name="group-keepalive", daemon=True)

    @property
    def layout(self) -> dict[str, Any]:
        return self.engine.layout

    def start(self) -> None:
        self._pinger.start()

    def stop(self) -> None:
        """Tell the followers to exit (after the running job, which holds no lock while it runs)."""
        self._stopped.set()
        with self._lock:
            if not self.in_doubt:
                self.runtime.broadcast({"op": "stop"})
        self._pinger.join(timeout=5)

    def generate(self, params: GenerationParams, hooks: JobHooks = NO_HOOKS) -> GenerationResult:
        """``WanEngine.generate`` over the group: every rank denoises, then the leader decodes.

        Raises:
            GroupFailed: a rank failed on its own, or did not arrive: the group is in doubt and restarts.
            Exception: what every rank raised alike (a cancel, an abort, an invalid request), or the
                leader's own failure while decoding.
        """
        if self.in_doubt:
            raise GroupFailed("This worker group is restarting after a failure; the job will be retried.")
        with self._lock:
            self._busy = True
            self.runtime.broadcast({"op": "generate", "params": params.to_json()})
        denoised: Denoised | None = None
        error: Exception | None = None
        try:
            denoised = self.engine.denoise(params, hooks)
        except Exception as exc:
            error = exc
        try:
            outcomes = self.runtime.gather(_outcome(error))
        except Exception as exc:  # a rank never arrived: it is stuck or gone
            self.in_doubt = True
            raise GroupFailed(f"The worker group lost a rank: {exc}") from error
        finally:
            self._busy = False  # the followers wait for the next command: keep-alives may flow again
        self.in_doubt = group_in_doubt(outcomes)
        if self.in_doubt:
            failures = [(rank, outcome) for rank, outcome in enumerate(outcomes) if outcome]
            summary = "; ".join(f"rank {rank}: {kind}: {message}" for rank, (kind, message) in failures)
            raise GroupFailed(summary) from error
        if error is not None:
            raise error  # every rank stopped the same way (a cancel, an abort): the group is fine
        assert denoised is not None
        try:
            return self.engine.decode(denoised, on_stage=hooks.on_stage)
        except GroupFailed:  # a split decode lost a rank
            self.in_doubt = True
            raise

    def _keep_alive(self) -> None:
        # NCCL/HCCL watchdogs and the control group's timeout end collectives that wait too long:
        # an idle group pings so that followers never wait longer than keepalive_s.
        while not self._stopped.wait(self.keepalive_s):
            with self._lock:
                if self._busy or self._stopped.is_set() or self.in_doubt:
                    continue
                try:
                    self.runtime.broadcast({"op": "ping"})
                except Exception as exc:
                    log.error("keep-alive failed, the group is in doubt: %s", exc)
                    self.in_doubt = True


def follow(runtime: ParallelRuntime, engine: WanEngine) -> int:
    """A follower's life: run each job the leader broadcasts until told to stop; returns the exit code."""
    while True:
        command = runtime.broadcast(None)
        if command["op"] == "ping":
            continue
        if command["op"] == "stop":
            return 0
        params = GenerationParams.from_json(command["params"])
        error: Exception | None = None
        denoised: Denoised | None = None
        try:
            denoised = engine.denoise(params)
        except (GenerationCancelled, GenerationAborted) as exc:
            log.info("rank %d stopped with the group: %s", runtime.rank, exc)
            error = exc
        except Exception as exc:
            log.exception("rank %d failed", runtime.rank)
            error = exc
        try:
            in_doubt = group_in_doubt(runtime.gather(_outcome(error)))
        except Exception:
            log.exception("rank %d lost the leader", runtime.rank)
            in_doubt = True
        if not in_doubt and denoised is not None and engine.video_decoder.together:
            in_doubt = _join_decode(runtime, engine, denoised)
        if in_doubt:
            log.error("rank %d: the group is in doubt after a failure; exiting for a restart", runtime.rank)
            return EXIT_GROUP_IN_DOUBT


def _join_decode(runtime: ParallelRuntime, engine: WanEngine, denoised: Denoised) -> bool:
    """A follower's share of a split VAE decode, which the leader runs too once the group agreed on the
    denoising; returns whether the group is in doubt (a rank was lost during it)."""
    try:
        engine.decode(denoised)
    except GroupFailed:
        log.exception("rank %d lost a rank during the split VAE decode", runtime.rank)
        return True
    except Exception as exc:  # every rank raised it alike: the job's failure, the group is fine
        log.info("rank %d: the split VAE decode failed with the group: %s", runtime.rank, exc)
    return False


def _outcome(error: BaseException | None) -> Outcome:
    if error is None:
        return None
    return type(error).__name__, getattr(error, "message", None) or str(error)


def _ignore_signal(signum: int, _frame: object) -> None:
    log.info("follower got signal %d; it stops when the leader says so", signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.group")
    parser.add_argument("--ulysses", type=int, default=1)
    parser.add_argument("--cfg", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"wanserve worker: {exc}") from None
    configure_logging(settings.log_level, settings.log_format, rank=int(os.environ.get("RANK", "0")))
    layout = ParallelLayout(int(os.environ.get("WORLD_SIZE", "1")), args.ulysses, args.cfg)
    runtime = init_parallel(layout, settings.device, settings.dist_timeout_s)
    if not runtime.is_leader:
        engine = load_engine(settings, parallel=runtime)
        signal.signal(signal.SIGTERM, _ignore_signal)
        signal.signal(signal.SIGINT, _ignore_signal)
        code = follow(runtime, engine)
    else:
        redis = Redis.from_url(settings.require_redis_url())
        # The launcher names each incarnation of the group, and finds its leader by that name.
        name = settings.worker_name or unique_worker_name()
        presence = announce_presence(settings, redis, name, layout)
        try:
            engine = load_engine(settings, parallel=runtime)
            presence.loaded(engine.profile, engine.layout)
            code = _lead(settings, runtime, engine, redis, name, presence)
        finally:
            presence.close()
    log.info("rank %d exiting with %d", runtime.rank, code)
    leave_group(code)


def _lead(
    settings: Settings,
    runtime: ParallelRuntime,
    engine: WanEngine,
    redis: Redis,
    name: str,
    presence: WorkerPresence,
) -> int:
    leader = GroupLeader(runtime, engine, settings.keepalive_s)
    leader.start()
    log.info("group leader ready: %s", engine.layout)
    try:
        serve(settings, leader, redis, name=name, stop_when=lambda: leader.in_doubt, presence=presence)
    finally:
        if not leader.in_doubt:
            leader.stop()
    return EXIT_GROUP_IN_DOUBT if leader.in_doubt else 0


if __name__ == "__main__":
    main()
