"""Event streams through a real `wanserve api` process: a stopping API does not wait on them forever."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from redis import Redis

from tests.processes import Processes, answers, free_port, wait_until
from tests.sse import Follower

pytestmark = pytest.mark.slow


def test_a_stopping_api_cuts_open_streams_after_its_grace_period(
    processes: Processes, redis: Redis, redis_url: str
) -> None:
    port = free_port()
    env = {"WANSERVE_REDIS_URL": redis_url, "WANSERVE_SHUTDOWN_GRACE_S": "1"}
    api = processes.start("api", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    created = httpx.post(f"{base}/v1/videos", json={"prompt": "a red fox", "seconds": 1})
    assert created.status_code == 200, created.text
    follower = Follower(f"{base}/v1/videos/{created.json()['id']}/events")
    assert follower.started.wait(10) and follower.videos()[0]["status"] == "queued"

    started = time.monotonic()
    api.send_signal(signal.SIGTERM)
    try:
        api.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the API is still waiting for its open event stream")
    assert time.monotonic() - started < 10
    assert follower.closed.wait(5), "the client saw its stream end (and would reconnect elsewhere)"
