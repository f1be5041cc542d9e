"""Real worker groups for the distributed tests: a group of `wanserve worker` ranks (torchrun on gloo) as a
process, and the few steps every group test takes (submit, wait); the fixtures are in conftest.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.processes import wait_until

REPO = Path(__file__).parents[2]


class Group:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGTERM first (torchrun stops its ranks on it), SIGKILL if that is not enough."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def submit(client: TestClient, prompt: str = "a red fox", **body: Any) -> str:
    payload = {"prompt": prompt, "size": "64x64", "seconds": 1, "num_inference_steps": 4, **body}
    response = client.post("/v1/videos", json=payload)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def wait_for(client: TestClient, video_id: str, done: Callable[[dict], bool], timeout: float = 120) -> dict:
    view: dict = {}

    def check() -> bool:
        nonlocal view
        view = client.get(f"/v1/videos/{video_id}").json()
        return done(view)

    wait_until(check, timeout, f"{video_id} ({view.get('status')})")
    return view


def finished(view: dict) -> bool:
    return view["status"] in ("completed", "failed", "cancelled")


def groups_started(log: str) -> list[str]:
    """The names the launcher started its groups under, in order (their ranks 0 register under them)."""
    return re.findall(r"worker group (\S+) started", log)
