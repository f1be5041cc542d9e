"""Real webhook receivers on 127.0.0.1 (a recording HTTP(S) server, one that trickles its answer), for the
integration and e2e tiers; their fixtures are in the conftests."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
VIDEO = {"id": "video_" + "0" * 32, "object": "video", "status": "completed", "progress": 100}


@dataclass
class Receiver:
    """Records every request; answers with ``statuses`` in turn, then with the last one forever."""

    url: str
    port: int
    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append((headers, body))
            self.received_at.append(time.monotonic())
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]


def serve(tls: ssl.SSLContext | None = None) -> tuple[Receiver, Callable[[], None]]:
    """Start a recording receiver (HTTPS when ``tls`` is given); returns it and its stop function."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = state.answer({name.lower(): value for name, value in self.headers.items()}, body)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", state.url + "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    if tls is not None:

        def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            state.server_names.append(name)

        tls.sni_callback = record_sni  # type: ignore[assignment]
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state = Receiver(url=f"{scheme}://127.0.0.1:{port}/hook", port=port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return state, stop


class Resolver:
    """A DNS stand-in: answers every name with ``addresses`` and counts the lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.addresses


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@dataclass
class Trickler:
    """A raw socket server that reads a request, then sends its status line one byte every ``gap_s``."""

    url: str
    gap_s: float
    connections: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def serve_trickling(gap_s: float = 0.5) -> tuple[Trickler, Callable[[], None]]:
    """Start a trickling server; returns it and its stop function."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    state = Trickler(url=f"http://127.0.0.1:{listener.getsockname()[1]}/slow", gap_s=gap_s)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in answer:
                if state.stop.wait(state.gap_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the sender hung up: what the deadline is for
                    return

    def accept() -> None:
        while not state.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            state.connections += 1
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def stop() -> None:
        state.stop.set()
        thread.join(timeout=2)
        listener.close()

    return state, stop


@dataclass(frozen=True)
class Certificates:
    """A test CA and a server certificate it signed for ``names``."""

    ca: Path
    cert: Path
    key: Path
    names: tuple[str, ...]

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificates(folder: Path, names: tuple[str, ...]) -> Certificates:
    """A CA and a leaf for ``names``, made by the ``openssl`` command (the test is skipped without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make test certificates")

    def run(command: str, *extra: str) -> None:
        subprocess.run([openssl, *command.split(), *extra], cwd=folder, check=True, capture_output=True)

    run("req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.pem -subj", "/CN=test CA")
    run("req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj", f"/CN={names[0]}")
    (folder / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{name}" for name in names) + "\n")
    run(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out leaf.pem",
        "-extfile",
        "san.ext",
    )
    return Certificates(ca=folder / "ca.pem", cert=folder / "leaf.pem", key=folder / "leaf.key", names=names)
