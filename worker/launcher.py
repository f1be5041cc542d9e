"""``wanserve worker --nproc N``: start a torchrun group and stop it gracefully.

torchrun answers SIGTERM by killing its ranks after a short grace, which would cut a video in half.
So torchrun runs in its own session and this launcher owns the signals: the first SIGTERM/SIGINT asks
rank 0's RQ worker (by RQ's shutdown command) to finish the running job and stop the group; a second
one tears the group down at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.command import send_shutdown_command

from service.core.model_profile import profile_for_folder
from service.core.settings import Settings
from worker.parallel import ParallelLayout
from worker.serve import model_folder, unique_worker_name

log = logging.getLogger("wanserve.worker")

_PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 3
"""How often a group that exited in doubt is started again within RESTART_WINDOW_S; one more exit in
that window and the launcher gives up (exits non-zero, for the orchestrator to replace the replica)."""
RESTART_WINDOW_S = 600.0
"""Restarts older than this no longer count: a replica that fails now and then lives on."""

GROUP_ENTRY = ("-m", "worker.group")


def torchrun_command(layout: ParallelLayout, entry: Sequence[str] = GROUP_ENTRY) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={layout.ranks}",
        *entry, f"--ulysses={layout.ulysses}", f"--cfg={layout.cfg}",
    ]  # fmt: skip


def _terminate_with_parent() -> None:
    """In the torchrun child: SIGTERM it (it then stops its ranks) when the launcher dies, even by SIGKILL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RestartBudget:
    """At most ``limit`` restarts in any ``window_s`` seconds (a sliding window)."""

    def __init__(
        self,
        limit: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._restarts: deque[float] = deque()

    def allow(self) -> bool:
        """Whether one more restart is within the budget now; if so it is counted."""
        now = self.clock()
        while self._restarts and now - self._restarts[0] >= self.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.limit:
            return False
        self._restarts.append(now)
        return True


class GroupLauncher:
    """Runs torchrun, starts a fresh one when a group exits in doubt, and stops it gracefully.

    A fresh torchrun per incarnation (rather than torchrun's own ``--max-restarts``) gets a fresh
    rendezvous: restarted ranks reusing the old one failed to connect their gloo mesh here.
    """

    def __init__(
        self, settings: Settings, layout: ParallelLayout, entry: Sequence[str] = GROUP_ENTRY
    ) -> None:
        redis_url = settings.require_redis_url()
        folder = model_folder(settings)  # the tiny model is generated once here, not by every rank
        profile = profile_for_folder(folder)
        try:
            layout.check_heads(profile.num_attention_heads)
        except ValueError as exc:
            raise SystemExit(f"wanserve worker: {exc}") from None
        self.layout = layout
        self.command = torchrun_command(layout, entry)
        self.redis = Redis.from_url(redis_url)
        self.name = unique_worker_name()
        self.env = {**os.environ, "WANSERVE_MODEL": str(folder)}
        if not settings.model:
            self.env["WANSERVE_MODEL_NAME"] = settings.model_name or profile.name
        self.stopping = False
        self.group: subprocess.Popen[bytes] | None = None
        self.leader_name = ""
        self.restarts = RestartBudget()

    def run(self) -> int:
        """Run the group until it stops by request or exits in doubt more often than ``self.restarts``
        allows (MAX_RESTARTS within RESTART_WINDOW_S); returns its exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        incarnation = 0
        while True:
            self.leader_name = f"{self.name}-r{incarnation}"
            incarnation += 1
            self.group = subprocess.Popen(
                self.command,
                env={**self.env, "WANSERVE_WORKER_NAME": self.leader_name},
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
            log.info("worker group %s started: %s", self.leader_name, self.layout)
            code = self.group.wait()
            if code == 0 or self.stopping:
                return code
            log.error("worker group %s exited with %d", self.leader_name, code)
            if not self.restarts.allow():
                log.error(
                    "worker group %s was restarted %d times within %.0f s; giving up",
                    self.name,
                    self.restarts.limit,
                    self.restarts.window_s,
                )
                return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.group is None:
            return
        # Rank 0 registers as leader_name, or leader_name-cN after reconnecting to Redis.
        try:
            leaders = [
                w.name for w in Worker.all(connection=self.redis) if w.name.startswith(self.leader_name)
            ]
        except RedisError:
            leaders = []  # cannot ask rank 0 to finish its job: stop now
        if self.stopping or not leaders:
            log.warning("stopping worker group %s now", self.leader_name)
            self.stopping = True
            self.group.send_signal(signal.SIGTERM)
            return
        self.stopping = True
        log.info("worker group %s stops after its running job (signal again to stop now)", self.leader_name)
        for leader in leaders:
            send_shutdown_command(self.redis, leader)
