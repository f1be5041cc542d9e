"""Job lifecycle under faults, with real worker processes: a worker killed mid-job, a job timeout."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.processes import Processes, answers, free_port, wait_until, worker_pid
from tests.webhook_receivers import Receiver
from worker.video import read_mp4

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
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
    os.kill(worker_pid(redis, first["worker"]), signal.SIGKILL)
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
    base = start_stack(
        processes, redis_url, fresh_data_dir, workers=1, WANSERVE_JOB_TIMEOUT_S="3", WANSERVE_MAX_STEPS="1000"
    )
    # The limit is checked at step boundaries, so the denoising itself must outlast it: 1,000 steps are
    # several times the limit even on an idle machine (100 took 2.5 s, under it, and the job completed in
    # its decode); the next job is a fraction of it even on a busy one.
    slow = {**LONG_JOB, "seconds": 5, "num_inference_steps": 1000}
    video_id = httpx.post(f"{base}/v1/videos", json=slow).json()["id"]
    wait_until(lambda: view(base, video_id)["status"] in ("completed", "failed"), 60, "the timeout")
    failed = view(base, video_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "job_timeout"
    assert "3 s limit" in failed["error"]["message"]
    quick = {"prompt": "a quick fox", "size": "32x32", "seconds": 1, "num_inference_steps": 1}
    quick_id = httpx.post(f"{base}/v1/videos", json=quick).json()["id"]
    wait_until(lambda: view(base, quick_id)["status"] == "completed", 60, "the next job")


def test_a_job_whose_worker_died_with_no_retries_left_ends_failed_in_its_record(
    processes: Processes, redis: Redis, redis_url: str, fresh_data_dir: Path, receiver: Receiver
) -> None:
    base = start_stack(
        processes,
        redis_url,
        fresh_data_dir,
        workers=1,
        WANSERVE_JOB_RETRIES="0",
        WANSERVE_HEARTBEAT_TTL_S="2",
        WANSERVE_CLEANUP_INTERVAL_S="0.5",
        WANSERVE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        WANSERVE_WEBHOOK_ALLOW_PRIVATE="1",
    )
    video_id = httpx.post(f"{base}/v1/videos", json={**LONG_JOB, "webhook_url": receiver.url}).json()["id"]
    wait_until(lambda: view(base, video_id)["stage"] == "denoise", 60, "the worker to start denoising")
    os.kill(worker_pid(redis, view(base, video_id)["worker"]), signal.SIGKILL)

    # The API alone (no worker is left) notices the lost job and ends it in the record itself.
    key = f"wanserve:video:{video_id}"
    wait_until(lambda: redis.hget(key, "status") == b'"failed"', 30, "the record to say failed")
    ended = view(base, video_id)
    assert ended["error"]["code"] == "worker_failed"
    assert ended["completed_at"] is not None and ended["expires_at"] is not None
    wait_until(lambda: len(receiver.requests) == 1, 30, "the video.failed webhook")
    assert json.loads(receiver.requests[0][1])["type"] == "video.failed"
