"""A fleet's view of real processes: the worker registry (loading → idle → busy → idle), the worker's own
probes and metrics, the API's metrics, and a whole video's life on S3 (moto's server over HTTP)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.processes import Processes, answers, free_port, wait_until
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow

JOB = {"prompt": "a red square moving right", "size": "64x64", "seconds": 1, "num_inference_steps": 4}
LONG_JOB = {**JOB, "size": "128x128", "num_inference_steps": 40}


def start_api(processes: Processes, env: dict[str, str]) -> str:
    port = free_port()
    api = processes.start("api", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/readyz") or api.poll() is not None, 60, "the API")
    assert api.poll() is None, processes.log(api)
    return base


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed with prometheus-client's own parser."""
    text = httpx.get(url).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, found), v in page.items() if n == name and labels.items() <= dict(found).items())


def wait_for_end(base: str, video_id: str, timeout: float = 120) -> dict[str, Any]:
    wait_until(
        lambda: httpx.get(f"{base}/v1/videos/{video_id}").json()["status"] in ("completed", "failed"),
        timeout,
        "the video to end",
    )
    return dict(httpx.get(f"{base}/v1/videos/{video_id}").json())


def test_a_worker_is_seen_loading_idle_busy_idle_with_its_probes_and_metrics(
    processes: Processes, redis: Redis, redis_url: str, fresh_data_dir: Path
) -> None:
    metrics_port = free_port()
    env = {"WANSERVE_REDIS_URL": redis_url, "WANSERVE_DATA_DIR": str(fresh_data_dir)}
    base = start_api(processes, env)
    worker = processes.start("worker", env={**env, "WANSERVE_METRICS_PORT": str(metrics_port)})
    probes = f"http://127.0.0.1:{metrics_port}"

    seen: list[str] = []
    readiness_while_loading: list[int] = []

    def observe() -> list[dict[str, Any]]:
        listed = list(httpx.get(f"{base}/v1/workers").json()["data"])
        for entry in listed:
            if not seen or seen[-1] != entry["state"]:
                seen.append(entry["state"])
            if entry["state"] == "loading":
                with contextlib.suppress(httpx.HTTPError):
                    readiness_while_loading.append(httpx.get(f"{probes}/readyz").status_code)
        return listed

    wait_until(lambda: any(w["state"] == "idle" for w in observe()) or worker.poll() is not None, 120, "idle")
    assert worker.poll() is None, processes.log(worker)
    assert httpx.get(f"{probes}/healthz").status_code == 200
    assert httpx.get(f"{probes}/readyz").status_code == 200
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["workers"]["idle"] == 1 and "host" not in str(ready)

    before = samples(f"{probes}/metrics")
    assert value(before, "wanserve_model_loaded") == 1
    video_id = httpx.post(f"{base}/v1/videos", json=LONG_JOB).json()["id"]
    wait_until(lambda: any(w["state"] == "busy" for w in observe()), 60, "busy")
    busy = next(w for w in observe() if w["state"] == "busy")
    assert busy["video_id"] == video_id
    assert wait_for_end(base, video_id)["status"] == "completed"
    wait_until(lambda: any(w["state"] == "idle" for w in observe()), 30, "idle again")

    assert seen[seen.index("idle") :][:3] == ["idle", "busy", "idle"], seen
    # Not ready while the weights load (a probe asked just as loading ended may already see 200).
    assert seen[0] == "loading" and 503 in readiness_while_loading, (seen, readiness_while_loading)

    after = samples(f"{probes}/metrics")
    assert value(after, "wanserve_jobs_total", status="completed") == 1
    assert value(after, "wanserve_denoise_step_seconds_count") == LONG_JOB["num_inference_steps"]
    assert value(after, "wanserve_stage_seconds_count", stage="denoise") == 1
    api_page = samples(f"{base}/metrics")
    assert value(api_page, "wanserve_videos_total", status="completed") == 1
    assert value(api_page, "wanserve_http_requests_total", route="/v1/videos/{video_id}", method="GET") > 0

    worker.terminate()
    worker.wait(timeout=60)
    wait_until(lambda: httpx.get(f"{base}/v1/workers").json()["data"] == [], 10, "the worker to deregister")


@pytest.mark.parametrize("redirect", [False, True])
def test_a_video_lives_and_dies_in_s3(
    processes: Processes,
    redis_url: str,
    fresh_data_dir: Path,
    s3_server: S3Server,
    s3_bucket: str,
    redirect: bool,
) -> None:
    env = {
        "WANSERVE_REDIS_URL": redis_url,
        "WANSERVE_DATA_DIR": str(fresh_data_dir),
        "WANSERVE_STORAGE_URL": f"s3://{s3_bucket}/videos",
        "WANSERVE_STORAGE_REDIRECT": "1" if redirect else "0",
        **s3_server.env,
    }
    base = start_api(processes, env)
    processes.start("worker", env=env)
    video_id = httpx.post(f"{base}/v1/videos", json=JOB).json()["id"]
    assert wait_for_end(base, video_id)["status"] == "completed"
    assert sorted(key.rsplit("/", 1)[1] for key in s3_server.keys(s3_bucket)) == [
        "spritesheet.jpg",
        "thumbnail.webp",
        "video.mp4",
    ]
    assert not any((fresh_data_dir / "videos").rglob("*.mp4")), "nothing on the local disk"

    content = httpx.get(f"{base}/v1/videos/{video_id}/content")
    assert content.status_code == (307 if redirect else 200)
    if redirect:
        assert content.headers["location"].startswith(s3_server.endpoint_url)
    whole = httpx.get(f"{base}/v1/videos/{video_id}/content", follow_redirects=True)
    assert whole.status_code == 200 and whole.content[4:8] == b"ftyp"
    part = httpx.get(
        f"{base}/v1/videos/{video_id}/content", headers={"Range": "bytes=0-99"}, follow_redirects=True
    )
    assert part.status_code == 206 and part.content == whole.content[:100]

    assert httpx.delete(f"{base}/v1/videos/{video_id}").status_code == 200
    wait_until(lambda: s3_server.keys(s3_bucket) == [], 10, "the bucket to be empty")
    assert httpx.get(f"{base}/v1/videos/{video_id}/content").status_code == 404
