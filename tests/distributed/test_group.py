"""Real worker groups: `wanserve worker --nproc 2` (torchrun on gloo), jobs through the API and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from service.core import redis_keys
from service.core.settings import Settings
from tests.distributed.groups import (
    REPO,
    finished,
    groups_started,
    submit,
    wait_for,
)
from tests.processes import holds_for
from worker.video_job import denoise_progress

pytestmark = pytest.mark.slow

LONG_JOB = {"size": "128x128", "seconds": 2, "num_inference_steps": 100}


def test_a_group_serves_cancels_and_stops_after_its_running_job(client, start_group, redis) -> None:
    group = start_group("--nproc", "2", "--ulysses", "2")

    video = wait_for(client, submit(client), finished)
    assert video["status"] == "completed", video["error"]
    assert video["parallel"] == {
        "ranks": 2,
        "ulysses": 2,
        "cfg": 1,
        "device": "cpu",
        "attention_backend": "native",
        "compile": "none",
    }

    cancelled = submit(client, **LONG_JOB)
    wait_for(client, cancelled, lambda v: v["stage"] == "denoise" and v["progress"] > 5)
    redis.set(redis_keys.cancel_key(cancelled), 1)  # what a cancel request writes
    view = wait_for(client, cancelled, finished)
    assert view["status"] == "cancelled"
    assert 5 < view["progress"] < 90

    assert wait_for(client, submit(client), finished)["status"] == "completed", "the group goes on"

    running = submit(client, **LONG_JOB)
    wait_for(client, running, lambda v: v["status"] == "in_progress")
    group.process.send_signal(signal.SIGTERM)
    assert group.wait(timeout=120) == 0, group.log
    assert client.get(f"/v1/videos/{running}").json()["status"] == "completed", "the running job finishes"
    assert "rank 1 exiting with 0" in group.log


def test_an_idle_group_outlives_its_collective_timeout(client, start_group) -> None:
    group = start_group("--nproc", "2", "--cfg", "2", WANSERVE_DIST_TIMEOUT_S="3", WANSERVE_KEEPALIVE_S="0.5")
    # Without keep-alives a waiting follower gives up after 3 s and the launcher restarts the group.
    holds_for(lambda: len(groups_started(group.log)) == 1, 2 * 3, "the first group, idle")
    video = wait_for(client, submit(client), finished)
    assert video["status"] == "completed", video["error"]
    assert video["parallel"]["cfg"] == 2
    assert groups_started(group.log) == [video["worker"]], "served by the group started first"


def faulty(ulysses: int, cfg: int) -> list[str]:
    """The real launcher, with failures injected into its ranks (see faulty_group.py)."""
    return [
        sys.executable,
        str(REPO / "tests" / "distributed" / "faulty_launcher.py"),
        str(ulysses),
        str(cfg),
    ]


def test_a_rank_failing_mid_step_restarts_the_group_and_retries_the_job(make_client, start_group) -> None:
    client = make_client(job_retries=1)
    group = start_group(entry=faulty(ulysses=2, cfg=1), WANSERVE_DIST_TIMEOUT_S="5")
    video = wait_for(client, submit(client, "fail on rank 1"), finished, timeout=180)
    assert video["status"] == "failed", group.log
    assert video["error"] == {
        "code": "worker_group_failed",
        "message": "The worker group failed while generating this video.",
    }
    assert "rank 1: RuntimeError: injected failure on rank 1" in group.log, "the details are logged"
    first, restarted, *_ = groups_started(group.log)
    assert video["worker"] == restarted, "the retry ran on the restarted group, and failed again"

    after_restart = wait_for(client, submit(client), finished)
    assert after_restart["status"] == "completed", group.log
    assert groups_started(group.log) == [first, restarted, after_restart["worker"]], "started again"
    assert "rank 1 exiting with 3" in group.log and "rank 0 exiting with 3" in group.log


def test_failures_of_the_leader_alone_fail_their_job_and_the_same_group_goes_on(
    client, make_client, start_group
) -> None:
    # A regression would leave the ranks out of step: they would wait out the 2 x 10 s control timeout.
    group = start_group(entry=faulty(ulysses=2, cfg=1), WANSERVE_DIST_TIMEOUT_S="10")

    # The leader's progress write fails at step 2: every rank stops at the next step boundary.
    submitted = time.monotonic()
    progress = wait_for(client, submit(client, "fail progress"), finished, timeout=60)
    assert time.monotonic() - submitted < 15, "ended by the group's verdict, not by a collective's timeout"
    assert progress["status"] == "failed", group.log
    assert progress["error"] == {
        "code": "generation_failed",
        "message": "The video could not be generated because of an internal error in the worker.",
    }
    assert progress["progress"] == denoise_progress(2, 4), "stopped at the boundary after step 2"
    assert "injected: lost the connection to Redis" in group.log, "the cause is logged"

    # The leader runs out of memory decoding, after the last collective: the job's failure alone.
    decode = wait_for(client, submit(client, "fail decode"), finished, timeout=60)
    assert decode["status"] == "failed", group.log
    assert decode["error"]["code"] == "out_of_memory"
    assert "/srv/secret" not in decode["error"]["message"]
    assert "injected: out of memory decoding with /srv/secret" in group.log

    # The job's time limit is enforced at a step boundary that every rank takes; 1,000 steps outlast it on
    # any machine (one process denoised 100 steps of an 81-frame job in 2.5 s, and a job whose steps end in
    # time completes).
    strict = make_client(job_timeout_s=2, max_steps=1000)
    slow = submit(strict, **{**LONG_JOB, "num_inference_steps": 1000})
    timed_out = wait_for(client, slow, finished, timeout=60)
    assert timed_out["status"] == "failed", group.log
    assert timed_out["error"]["code"] == "job_timeout"
    assert timed_out["stage"] == "denoise" and timed_out["progress"] < 90

    after = wait_for(client, submit(client), finished)
    assert after["status"] == "completed", group.log
    worker = progress["worker"]
    assert groups_started(group.log) == [worker], "the group started first, never restarted"
    assert decode["worker"] == timed_out["worker"] == after["worker"] == worker
    assert "exiting with 3" not in group.log, "no rank left the group"
    assert group.process.poll() is None


def test_the_same_failure_on_every_rank_leaves_the_group_serving(client, start_group) -> None:
    group = start_group(entry=faulty(ulysses=1, cfg=2))
    video = wait_for(client, submit(client, "fail everywhere"), finished)
    assert video["status"] == "failed"
    assert video["error"]["code"] == "generation_failed"
    assert "injected failure on every rank" in group.log, "the client gets a summary, the log the text"
    assert wait_for(client, submit(client), finished)["status"] == "completed"
    assert group.process.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--nproc", "4", "--ulysses", "4"), "does not divide the model's 2 attention heads"),
        (("--nproc", "3", "--ulysses", "2"), "must equal --ulysses 2 x --cfg 1"),
    ],
)
def test_impossible_layouts_fail_at_start_up(settings: Settings, args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", *args],
        env={
            **os.environ,
            "WANSERVE_REDIS_URL": settings.redis_url or "",
            "WANSERVE_DATA_DIR": str(settings.data_dir),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert message in done.stderr
