"""The whole path through real `wanserve api` and `wanserve worker` processes and the OpenAI SDK."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import imageio.v3 as iio
import openai
import pytest
from redis import Redis

from tests.processes import Processes, answers, free_port, wait_until
from worker.video import read_mp4

pytestmark = pytest.mark.slow


@pytest.fixture
def server(processes: Processes, redis: Redis, redis_url: str, fresh_data_dir: Path) -> str:
    port = free_port()
    env = {"WANSERVE_REDIS_URL": redis_url, "WANSERVE_DATA_DIR": str(fresh_data_dir)}
    api = processes.start("api", "--port", str(port), env=env)
    processes.start("worker", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    assert api.poll() is None, processes.log(api)
    return base


def test_the_openai_sdk_works_unmodified(server: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)
    started = time.perf_counter()
    video = client.videos.create_and_poll(
        prompt="a red fox running through snow",
        seconds="1",
        size="64x64",  # type: ignore[arg-type]
        extra_body={"seed": 11, "num_inference_steps": 4, "negative_prompt": "blurry"},
        poll_interval_ms=100,
    )
    elapsed = time.perf_counter() - started
    assert video.status == "completed", video.error
    assert (video.progress, video.size, video.seconds) == (100, "64x64", "1")
    extra = video.model_extra or {}
    assert (extra["seed"], extra["num_inference_steps"], extra["negative_prompt"]) == (11, 4, "blurry")
    print(f"\n64x64, 17 frames, 4 steps, end to end through the SDK: {elapsed:.2f} s")

    assert client.videos.retrieve(video.id).status == "completed"
    assert [v.id for v in client.videos.list()] == [video.id]

    out = tmp_path / "fox.mp4"
    client.videos.download_content(video.id).write_to_file(out)
    frames = read_mp4(out)
    assert frames.shape == (17, 64, 64, 3)
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").read()
    assert iio.imread(thumbnail, extension=".webp").shape == (64, 64, 3)

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted) == (video.id, True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_curl_style_json_range_and_etag(server: str) -> None:
    created = httpx.post(
        f"{server}/v1/videos",
        json={"prompt": "a red fox", "seconds": 1, "size": "32x32", "num_inference_steps": 2},
    )
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    wait_until(
        lambda: httpx.get(f"{server}/v1/videos/{video_id}").json()["status"] == "completed", 60, "the video"
    )

    whole = httpx.get(f"{server}/v1/videos/{video_id}/content")
    assert whole.headers["content-type"] == "video/mp4"
    etag = whole.headers["etag"]
    part = httpx.get(f"{server}/v1/videos/{video_id}/content", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 0-99/{len(whole.content)}"
    assert part.content == whole.content[:100]
    cached = httpx.get(f"{server}/v1/videos/{video_id}/content", headers={"If-None-Match": etag})
    assert cached.status_code == 304


def test_progress_moves_while_the_worker_denoises(server: str) -> None:
    body = {"prompt": "a slow fox", "size": "128x128", "num_frames": 33, "num_inference_steps": 100}
    video_id = httpx.post(f"{server}/v1/videos", json=body).json()["id"]
    seen: list[tuple[str, int, str]] = []
    with httpx.Client() as http:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            view = http.get(f"{server}/v1/videos/{video_id}").json()
            seen.append((view["status"], view["progress"], view["stage"]))
            if view["status"] in ("completed", "failed"):
                break
            time.sleep(0.01)
    assert seen[-1][:2] == ("completed", 100)
    denoising = {progress for status, progress, stage in seen if stage == "denoise"}
    assert len(denoising) >= 3, seen
    progresses = [progress for _, progress, _ in seen]
    assert progresses == sorted(progresses), "progress never goes back"
