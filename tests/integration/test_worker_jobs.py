"""Jobs run by a real RQ worker (in this process, burst mode) over real Redis and the tiny model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job, JobStatus

from service.api.app import create_app
from service.core import redis_keys
from service.core.settings import Settings
from service.core.storage import LocalStorage
from service.core.video_store import VideoStore
from worker.errors import GenerationAborted
from worker.serve import make_worker
from worker.video import read_mp4
from worker.video_job import VideoJobRunner, denoise_progress


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def submit(client: TestClient, **body: Any) -> str:
    response = client.post("/v1/videos", json={"prompt": "a red fox", "seconds": 1, "size": "64x64", **body})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def run_worker_until_idle(settings: Settings, engine, redis: Redis) -> None:
    make_worker(settings, engine, redis).work(burst=True, with_scheduler=False)


def take_job(redis: Redis, settings: Settings, video_id: str) -> None:
    """What a worker does to the RQ job when it starts running it (the API tells running from queued)."""
    job = Job.fetch(video_id, connection=redis, serializer=redis_keys.SERIALIZER)
    VideoStore(redis, settings.queue).queue.remove(job)
    job.set_status(JobStatus.STARTED)


class RecordingStore(VideoStore):
    """The real store, remembering every progress it wrote and acting at a chosen step."""

    def __init__(self, redis: Redis, queue: str, at_progress: int | None = None, action=None) -> None:
        super().__init__(redis, queue)
        self.progress: list[int] = []
        self.at_progress, self.action = at_progress, action

    def update(self, video_id: str, **fields: Any) -> bool:
        written = super().update(video_id, **fields)
        if "progress" in fields:
            self.progress.append(fields["progress"])
            if fields["progress"] == self.at_progress and self.action is not None:
                self.action(video_id)
        return written


def test_a_job_completes_with_files_timings_and_progress(client, settings, engine, redis) -> None:
    video_id = submit(client, num_inference_steps=5)
    run_worker_until_idle(settings, engine, redis)

    video = client.get(f"/v1/videos/{video_id}").json()
    assert (video["status"], video["progress"], video["stage"], video["error"]) == (
        "completed",
        100,
        "done",
        None,
    )
    assert set(video["stage_durations"]) == {
        "queue_wait_s",
        "text_encode_s",
        "denoise_s",
        "vae_decode_s",
        "encode_s",
        "store_s",
    }
    assert video["completed_at"] >= video["started_at"] >= video["created_at"]
    assert video["worker"].startswith("wanserve-")
    frames = read_mp4(LocalStorage(settings.videos_dir).path(video_id))
    assert frames.shape == (17, 64, 64, 3)
    assert (
        Job.fetch(video_id, connection=redis, serializer=redis_keys.SERIALIZER).get_status()
        == JobStatus.FINISHED
    )
    registered = redis.hget(redis_keys.MODEL_REGISTRY_KEY, "wan2.1-tiny-random")
    assert registered is not None and b"64x64" in registered


@pytest.mark.parametrize("cache", ["fast", {"method": "easycache", "threshold": 1.0}])
def test_the_video_reports_the_cache_it_ran_with(client, settings, engine, redis, cache) -> None:
    video_id = submit(client, num_inference_steps=8, cache=cache)
    run_worker_until_idle(settings, engine, redis)
    response = client.get(f"/v1/videos/{video_id}")
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["status"] == "completed", video["error"]
    assert video["cache"]["blocks_skipped"] > 0
    assert video["cache"]["blocks_computed"] > 0
    assert video["cache"]["passes_skipped"] > 0


def test_progress_moves_on_every_denoising_step(client, settings, engine, redis) -> None:
    video_id = submit(client, num_inference_steps=6)
    store = RecordingStore(redis, settings.queue)
    VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "test").run(video_id)
    steps = [denoise_progress(done, 6) for done in range(1, 7)]
    assert store.progress == [0, 1, 2, *steps, 90, 95, 98, 100]
    assert store.progress == sorted(store.progress)
    assert len(set(steps)) == 6


def test_a_failing_job_ends_failed_and_the_worker_takes_the_next(
    client, settings, engine, redis, tmp_path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    failing = settings.model_copy(update={"storage_dir": blocked})
    first, second = submit(client), submit(client)

    make_worker(failing, engine, redis).work(burst=True, max_jobs=1, with_scheduler=False)
    run_worker_until_idle(settings, engine, redis)

    failed = client.get(f"/v1/videos/{first}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "storage_error"
    assert "Cannot write to storage" in failed["error"]["message"]
    assert str(tmp_path) not in failed["error"]["message"], "no paths for clients"
    # Recorded, not raised: RQ must not retry a job that failed for a reason of its own.
    assert (
        Job.fetch(first, connection=redis, serializer=redis_keys.SERIALIZER).get_status()
        == JobStatus.FINISHED
    )
    assert client.get(f"/v1/videos/{second}").json()["status"] == "completed"


def test_a_cancel_stops_a_running_job_at_a_step_boundary(client, settings, engine, redis) -> None:
    video_id = submit(client, num_inference_steps=8)
    store = RecordingStore(
        redis,
        settings.queue,
        at_progress=denoise_progress(3, 8),
        action=lambda v: redis.set(redis_keys.cancel_key(v), 1),
    )
    result = VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "test").run(video_id)
    assert result == {"status": "cancelled"}
    assert max(store.progress) == denoise_progress(3, 8)
    video = client.get(f"/v1/videos/{video_id}").json()
    assert (video["status"], video["error"]["code"]) == ("cancelled", "cancelled")
    assert "step 4 of 8" in video["error"]["message"]
    assert not LocalStorage(settings.videos_dir).exists(video_id)
    assert not redis.exists(redis_keys.cancel_key(video_id))


def test_the_cancel_endpoint_stops_a_running_video(client, settings, engine, redis) -> None:
    video_id = submit(client, num_inference_steps=8)
    take_job(redis, settings, video_id)
    responses = []
    store = RecordingStore(
        redis,
        settings.queue,
        at_progress=denoise_progress(2, 8),
        action=lambda v: responses.append(client.post(f"/v1/videos/{v}/cancel")),
    )
    VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "test").run(video_id)
    assert responses[0].status_code == 200
    assert responses[0].json()["status"] == "in_progress", "a running video stops at its next step"
    video = client.get(f"/v1/videos/{video_id}").json()
    assert (video["status"], video["progress"]) == ("cancelled", denoise_progress(2, 8))


def test_deleting_a_running_video_stops_it_and_leaves_nothing(client, settings, engine, redis) -> None:
    video_id = submit(client, num_inference_steps=8)
    take_job(redis, settings, video_id)
    store = RecordingStore(
        redis,
        settings.queue,
        at_progress=denoise_progress(2, 8),
        action=lambda v: client.delete(f"/v1/videos/{v}"),
    )
    VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "test").run(video_id)
    assert max(store.progress) == denoise_progress(2, 8)
    assert not redis.exists(redis_keys.video_key(video_id)), "the record must not be resurrected"
    assert not (Path(settings.videos_dir) / video_id).exists()
    assert client.get(f"/v1/videos/{video_id}").status_code == 404


def test_a_job_handed_out_again_after_it_ended_is_not_generated_twice(
    client, settings, engine, redis
) -> None:
    video_id = submit(client)
    run_worker_until_idle(settings, engine, redis)
    first = client.get(f"/v1/videos/{video_id}").json()
    store = RecordingStore(redis, settings.queue)
    result = VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "late").run(video_id)
    assert result == {"status": "completed"}
    assert store.progress == []
    assert client.get(f"/v1/videos/{video_id}").json() == first


def test_a_video_deleted_while_queued_is_never_generated(client, settings, engine, redis) -> None:
    video_id = submit(client)
    client.delete(f"/v1/videos/{video_id}")
    run_worker_until_idle(settings, engine, redis)
    assert not redis.exists(redis_keys.video_key(video_id))
    assert not LocalStorage(settings.videos_dir).exists(video_id)


def test_a_video_deleted_between_dequeue_and_start_is_skipped(client, settings, engine, redis) -> None:
    video_id = submit(client)
    redis.delete(redis_keys.video_key(video_id))
    store = VideoStore(redis, settings.queue)
    assert VideoJobRunner(store, LocalStorage(settings.videos_dir), engine, "test").run(video_id) == {
        "status": "deleted"
    }
    assert not redis.exists(redis_keys.video_key(video_id))


def test_a_failure_tells_the_client_a_classified_error_and_logs_the_details(
    client, settings, engine, redis, monkeypatch, caplog
) -> None:
    secret = "/home/deploy/.cache/wan/vae.safetensors (token hf_0123456789)"

    def broken_decode(latents: Any) -> Any:
        raise RuntimeError(f"CUDNN_STATUS_EXECUTION_FAILED decoding {latents.shape} with {secret}")

    monkeypatch.setattr(engine, "_decode", broken_decode)
    video_id = submit(client)
    with caplog.at_level(logging.INFO, logger="wanserve.worker"):
        run_worker_until_idle(settings, engine, redis)

    response = client.get(f"/v1/videos/{video_id}")
    video = response.json()
    assert video["status"] == "failed"
    assert video["error"] == {
        "code": "generation_failed",
        "message": "The video could not be generated because of an internal error in the worker.",
    }
    assert "/home/deploy" not in response.text and "CUDNN" not in response.text
    assert f"{video_id} failed" in caplog.text and secret in caplog.text
    assert "Traceback (most recent call last)" in caplog.text


def test_a_job_past_its_time_limit_stops_at_a_step_boundary(
    client, make_client, settings, engine, redis, caplog
) -> None:
    strict = make_client(job_timeout_s=1)  # the limit is the API's, enqueued with each job
    # About 3 s of denoising on an idle 2-core machine: well past the 1 s limit however fast it runs.
    slow = submit(strict, size="128x128", seconds=5, num_inference_steps=100)
    after = submit(client)
    with caplog.at_level(logging.INFO, logger="wanserve.worker"):
        run_worker_until_idle(settings, engine, redis)

    video = client.get(f"/v1/videos/{slow}").json()
    assert (video["status"], video["stage"]) == ("failed", "denoise")
    assert video["error"] == {
        "code": "job_timeout",
        "message": "The job ran longer than its 1 s limit (WANSERVE_JOB_TIMEOUT_S).",
    }
    failures = [record for record in caplog.records if record.exc_info]
    assert [record.exc_info[0] for record in failures] == [GenerationAborted], "the deadline, not RQ's alarm"
    assert client.get(f"/v1/videos/{after}").json()["status"] == "completed"
