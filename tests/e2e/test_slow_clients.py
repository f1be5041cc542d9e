"""A real `wanserve api` against clients that hold connections open (slowloris) or speak broken HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Processes, answers, free_port, read_all, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def api(processes: Processes, redis_url: str, fresh_data_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        "WANSERVE_REDIS_URL": redis_url,
        "WANSERVE_DATA_DIR": str(fresh_data_dir),
        "WANSERVE_HEADER_TIMEOUT_S": "1",
        "WANSERVE_BODY_TIMEOUT_S": "1",
    }
    process = processes.start("api", "--port", str(port), env=env)
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz") or process.poll() is not None, 60, "api")
    yield "127.0.0.1", port


def test_connections_that_never_finish_their_headers_are_closed(api: tuple[str, int]) -> None:
    host, port = api
    held = []
    for _ in range(100):
        sock = socket.create_connection((host, port))
        sock.sendall(b"GET /v1/videos HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        held.append(sock)
    idle = socket.create_connection((host, port))  # sends nothing at all
    started = time.monotonic()
    answers_ = [read_all(sock, timeout=10) for sock in [*held, idle]]
    assert time.monotonic() - started < 10
    for answer in answers_:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_timeout"
    assert httpx.get(f"http://{host}:{port}/healthz").status_code == 200, "still serving"


def test_a_body_that_trickles_in_is_cut_off(api: tuple[str, int]) -> None:
    host, port = api
    sock = socket.create_connection((host, port))
    head = b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    sock.sendall(head + b"\r\n{")
    started = time.monotonic()
    answer = read_all(sock, timeout=10)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer


def test_a_malformed_request_is_answered_in_json(api: tuple[str, int]) -> None:
    host, port = api
    sock = socket.create_connection((host, port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
    answer = read_all(sock, timeout=5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
