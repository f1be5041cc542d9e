"""Real processes for the e2e and distributed tiers: `wanserve ...` started as a user would, and waiting on
them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from redis import Redis
from rq.worker import Worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def holds_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait ``seconds`` while ``check`` holds; fail as soon as it does not."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        assert check(), f"{what} stopped holding after {elapsed:.1f} s"
        time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def worker_pid(redis: Redis, name: str) -> int:
    """The process ID the RQ worker ``name`` registered in Redis (a worker's name carries no meaning)."""
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=redis)
    assert worker is not None and worker.pid, f"no worker {name!r} registered in Redis"
    return int(worker.pid)


class Processes:
    """Starts `wanserve ...` subprocesses in their own sessions and stops every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{args[0]}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        index = self.started.index(process)
        name = process.args[3] if isinstance(process.args, list) else "process"
        return (self.log_dir / f"{name}-{index}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """What a raw socket receives until the server closes it, or ``timeout`` passes in silence."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data
