"""`wanserve dev` (embedded Redis, API and worker in one command) and `wanserve generate`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shapes_model.analyse import analyse_mp4
from tests.processes import Processes, answers, free_port, wait_until
from worker.video import read_mp4

pytestmark = pytest.mark.slow


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_runs_everything_with_an_embedded_redis(processes: Processes, fresh_data_dir: Path) -> None:
    port = free_port()
    env = {"WANSERVE_DATA_DIR": str(fresh_data_dir), "WANSERVE_REDIS_URL": ""}
    dev = processes.start("dev", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or dev.poll() is not None, 60, "wanserve dev")
    assert dev.poll() is None, processes.log(dev)

    fields = {"prompt": "a red fox", "seconds": "1", "size": "64x64"}
    created = httpx.post(f"{base}/v1/videos", files={k: (None, v) for k, v in fields.items()})
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["status"] == "completed", 90, "the video"
    )
    content = httpx.get(f"{base}/v1/videos/{video_id}/content")
    video_file = fresh_data_dir / "check.mp4"
    video_file.write_bytes(content.content)
    assert read_mp4(video_file).shape == (17, 64, 64, 3)
    assert "embedded Redis at unix://" in processes.log(dev)

    dev.send_signal(signal.SIGTERM)
    dev.wait(timeout=30)
    # The worker and the embedded redis-server run in dev's process group: none may outlive it.
    wait_until(lambda: not process_group_alive(dev.pid), 30, "dev's children to exit")


def test_the_default_model_draws_what_the_api_is_asked(processes: Processes, fresh_data_dir: Path) -> None:
    port = free_port()
    env = {"WANSERVE_DATA_DIR": str(fresh_data_dir), "WANSERVE_REDIS_URL": "", "WANSERVE_MODEL": ""}
    dev = processes.start("dev", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or dev.poll() is not None, 60, "wanserve dev")
    assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "wan2.1-tiny-shapes"

    created = httpx.post(f"{base}/v1/videos", json={"prompt": "a yellow triangle moving left", "seed": 0})
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["status"] == "completed", 120, "the video"
    )
    video_file = fresh_data_dir / "check.mp4"
    video_file.write_bytes(httpx.get(f"{base}/v1/videos/{video_id}/content").content)
    seen = analyse_mp4(video_file)
    assert (seen.colour, seen.direction) == ("yellow", "left"), seen


def run_generate(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "generate", *args],
        env={**os.environ, "WANSERVE_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generate_writes_an_mp4_in_process(fresh_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = run_generate(
        "a red fox", "-o", str(out), "--size", "32x32", "--steps", "2", data_dir=fresh_data_dir
    )
    assert done.returncode == 0, done.stderr
    assert "denoise: 100%" in done.stderr, "a progress bar"
    assert read_mp4(out).shape == (17, 32, 32, 3)


def test_generate_rejects_bad_input_with_a_message(fresh_data_dir: Path, tmp_path: Path) -> None:
    done = run_generate("a fox", "-o", str(tmp_path / "x.mp4"), "--num-frames", "18", data_dir=fresh_data_dir)
    assert done.returncode != 0
    assert "4k+1" in done.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_generate_with_the_default_model_draws_the_prompt(fresh_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = run_generate(
        "a red circle moving right", "-o", str(out), "--seed", "0", data_dir=fresh_data_dir, WANSERVE_MODEL=""
    )
    assert done.returncode == 0, done.stderr
    seen = analyse_mp4(out)
    assert (seen.colour, seen.direction) == ("red", "right"), seen
