"""`wanserve api --workers N`: uvicorn's worker processes, each started from import paths, serve the same
API with the same settings and the same guarded protocol as a single process."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.processes import Processes, answers, free_port, read_all, wait_until

pytestmark = pytest.mark.slow


def test_several_api_processes_serve_one_port(
    processes: Processes, redis: Redis, redis_url: str, fresh_data_dir: Path
) -> None:
    port = free_port()
    env = {
        "WANSERVE_REDIS_URL": redis_url,
        "WANSERVE_DATA_DIR": str(fresh_data_dir),
        "WANSERVE_HEADER_TIMEOUT_S": "1",
    }
    api = processes.start("api", "--port", str(port), "--workers", "2", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/healthz") or api.poll() is not None, 120, "api")
    assert api.poll() is None, processes.log(api)

    with httpx.Client(base_url=base, timeout=10) as http:
        created = http.post("/v1/videos", json={"prompt": "a red fox", "seconds": 1, "size": "64x64"})
        assert created.status_code == 200, created.text
        video = created.json()
        # Whichever process answers, it reads the same Redis: the status and the list agree.
        for _ in range(6):
            read = http.get(f"/v1/videos/{video['id']}")
            assert read.status_code == 200 and read.json()["id"] == video["id"]
            assert read.headers["openai-poll-after-ms"] == "1000"
        assert [v["id"] for v in http.get("/v1/videos").json()["data"]] == [video["id"]]

    # The header deadline of the environment reached the worker processes (1 s, not the default 10 s).
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    answer = read_all(sock, timeout=8)
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body)["error"]["code"] == "request_timeout"

    api.send_signal(signal.SIGTERM)
    api.wait(timeout=30)
    assert "Application shutdown complete" in processes.log(api)
