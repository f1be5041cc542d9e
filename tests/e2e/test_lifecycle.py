"""Job lifecycle under faults, with real worker processes: a worker killed mid-job, a job timeout."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.e2e.conftest import Processes, answers, free_port, wait_until
from worker.video import read_mp4

pytestmark = pytest.mark.slow

LONG_JOB = {"prompt": "a long fox", "size": "128x128", "seconds": 2, "num_inference_steps": 100}


def start_stack(processes: Processes, redis_url: str, data_dir: Path, workers: int, **env: str) -> str:
    port = free_port()
    base_env = {"WANSERVE_REDIS_URL": redis_url, "WANSERVE_DATA_DIR": str(data_dir), **env}
    api = processes.start("api", "--port", str(port), env=base_env)
    for _ in range(workers):
        processes.start("worker", env=base_env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    return base


def view(base: str, video_id: str) -> dict:
    return httpx.get(f"{base}/v1/videos/{video_id}").json()


def test_a_worker_killed_mid_job_is_replaced_and_the_video_completes_once(
    processes: Processes, redis: Redis, redis_url: str, fresh_data_dir: Path
) -> None:
    base = start_stack(
        processes,
        redis_url,
        fresh_data_dir,
        workers=2,
        WANSERVE_HEARTBEAT_TTL_S="3",
        WANSERVE_REAP_INTERVAL_S="1",
    )
    wait_until(lambda: len(redis.keys("rq:worker:*")) == 2, 60, "two workers")
    video_id = httpx.post(f"{base}/v1/videos", json=LONG_JOB).json()["id"]
    wait_until(lambda: view(base, video_id)["stage"] == "denoise", 60, "the first worker to start denoising")
    first = view(base, video_id)
    victim_pid = int(first["worker"].split("-")[-2])  # wanserve-<host>-<pid>-<suffix>
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    wait_until(lambda: view(base, video_id)["status"] in ("completed", "failed"), 120, "the retry")
    done = view(base, video_id)
    print(f"\nkilled worker's job completed {time.monotonic() - killed_at:.1f} s after the kill")
    assert done["status"] == "completed", done["error"]
    assert done["worker"] != first["worker"]
    content = httpx.get(f"{base}/v1/videos/{video_id}/content")
    (fresh_data_dir / "out.mp4").write_bytes(content.content)
    assert read_mp4(fresh_data_dir / "out.mp4").shape == (33, 128, 128, 3)
    record_attempts = redis.hget(f"wanserve:video:{video_id}", "attempts")
    assert record_attempts == b"2", "started twice, completed once"
    files = sorted(p.name for p in (fresh_data_dir / "videos" / video_id).iterdir())
    assert files == ["spritesheet.jpg", "thumbnail.webp", "video.mp4"], "no partial file left behind"


def test_a_job_longer_than_its_timeout_fails_clearly_and_the_worker_goes_on(
    processes: Processes, redis_url: str, fresh_data_dir: Path
) -> None:
    base = start_stack(processes, redis_url, fresh_data_dir, workers=1, WANSERVE_JOB_TIMEOUT_S="3")
    # Several times the limit even on an idle machine; the next job is a fraction of it even on a busy one.
    video_id = httpx.post(f"{base}/v1/videos", json={**LONG_JOB, "seconds": 5}).json()["id"]
    wait_until(lambda: view(base, video_id)["status"] in ("completed", "failed"), 60, "the timeout")
    failed = view(base, video_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "job_timeout"
    assert "3 s limit" in failed["error"]["message"]
    quick = {"prompt": "a quick fox", "size": "32x32", "seconds": 1, "num_inference_steps": 1}
    quick_id = httpx.post(f"{base}/v1/videos", json=quick).json()["id"]
    wait_until(lambda: view(base, quick_id)["status"] == "completed", 60, "the next job")
