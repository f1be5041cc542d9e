"""Both guarded protocols (httptools, served where it is installed; h11, the fallback) keep the same
promises: a header deadline (408), a bound on the request head and JSON 400s for broken requests."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from service.api import server
from service.api.app import create_app
from service.core.settings import Settings
from tests.processes import free_port, read_all

PROTOCOLS = ["h11", "httptools"]


@pytest.fixture(params=PROTOCOLS)
def address(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[str, int]]:
    if request.param == "httptools" and server.HttpToolsProtocol is None:
        pytest.skip("httptools is not installed")
    base: type[asyncio.Protocol] = (
        server.GuardedH11Protocol if request.param == "h11" else server.GuardedHttpToolsProtocol
    )
    protocol = type(base.__name__, (base,), {"header_timeout_s": 0.5})
    port = free_port()
    config = uvicorn.Config(create_app(settings), port=port, http=protocol, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield "127.0.0.1", port
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


def ask(address: tuple[str, int], raw: bytes, timeout: float = 5) -> tuple[bytes, dict]:
    with socket.create_connection(address) as sock:
        sock.sendall(raw)
        head, _, body = read_all(sock, timeout).partition(b"\r\n\r\n")
    return head, json.loads(body)


def test_headers_that_never_end_get_a_408(address: tuple[str, int]) -> None:
    started = time.monotonic()
    head, body = ask(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert head.startswith(b"HTTP/1.1 408") and body["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 3


def test_a_kept_alive_connection_waits_for_the_next_request_no_longer(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(sock, 3)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 2_000,
    ],
    ids=["malformed", "a header over 16 KiB", "headers over 16 KiB"],
)
def test_broken_requests_get_a_json_400(address: tuple[str, int], raw: bytes) -> None:
    head, body = ask(address, raw)
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    assert body["error"]["code"] == "invalid_http_request"


def test_a_head_within_the_bound_is_served(address: tuple[str, int]) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\nConnection: close\r\n\r\n"
    head, body = ask(address, raw)
    assert head.startswith(b"HTTP/1.1 200") and body == {"status": "ok"}


def test_a_body_in_tiny_chunks_is_not_taken_for_a_long_head(address: tuple[str, int]) -> None:
    body = json.dumps({"prompt": "a red fox", "seconds": 1, "size": "64x64"}).encode() + b" " * 3_000
    chunks = b"".join(b"1\r\n%b\r\n" % body[i : i + 1] for i in range(len(body)))  # ~18 KiB of framing
    head = b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    answer_head, video = ask(address, raw)
    assert answer_head.startswith(b"HTTP/1.1 200"), answer_head
    assert video["object"] == "video"
