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

from redis import Redis
from rq import Worker
from rq.command import send_shutdown_command

from service.model_profile import profile_for_folder
from service.settings import Settings
from worker.main import model_folder, unique_worker_name
from worker.parallel import ParallelLayout

log = logging.getLogger("wanserve.worker")

_PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 3
"""How often torchrun restarts a group whose ranks exited in doubt, before the launcher gives up."""


def torchrun_command(layout: ParallelLayout) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={layout.ranks}",
        f"--max-restarts={MAX_RESTARTS}",
        "-m", "worker.group", f"--ulysses={layout.ulysses}", f"--cfg={layout.cfg}",
    ]  # fmt: skip


def _terminate_with_parent() -> None:
    """In the torchrun child: SIGTERM it (it then stops its ranks) when the launcher dies, even by SIGKILL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def launch_group(settings: Settings, layout: ParallelLayout) -> int:
    """Run one worker group until it stops; returns its exit code."""
    if not settings.redis_url:
        raise SystemExit("WANSERVE_REDIS_URL is not set (use `wanserve dev` for an embedded Redis)")
    folder = model_folder(settings)  # the tiny model is generated once here, not by every rank
    try:
        layout.check_heads(profile_for_folder(folder).num_attention_heads)
    except ValueError as exc:
        raise SystemExit(f"wanserve worker: {exc}") from None
    name = unique_worker_name()
    redis = Redis.from_url(settings.redis_url)
    env = {**os.environ, "WANSERVE_WORKER_NAME": name, "WANSERVE_MODEL": str(folder)}
    if not settings.model:
        env["WANSERVE_MODEL_NAME"] = settings.model_name or profile_for_folder(folder).name
    group = subprocess.Popen(
        torchrun_command(layout), env=env, start_new_session=True, preexec_fn=_terminate_with_parent
    )
    log.info("worker group %s started: %s", name, layout)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        # Rank 0 registers as NAME-r<restart>: ask whichever incarnation is alive to stop.
        leaders = [
            worker.name for worker in Worker.all(connection=redis) if worker.name.startswith(f"{name}-r")
        ]
        if stopping or not leaders:
            log.warning("stopping worker group %s now", name)
            group.send_signal(signal.SIGTERM)
            return
        stopping = True
        log.info("worker group %s stops after its running job (signal again to stop now)", name)
        for leader in leaders:
            send_shutdown_command(redis, leader)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return group.wait()
