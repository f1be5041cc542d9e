"""The HTTP API against a real Redis: validation, listing, deletion, errors (no worker running)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from service.api.app import create_app
from service.core import redis_keys
from service.core.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def create(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/videos", json={"prompt": "a red fox", "seconds": 1, "size": "64x64", **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"]
    return error


def test_create_from_json_enqueues_one_rq_job_under_the_video_id(client: TestClient, redis: Redis) -> None:
    video = create(client, seed=7, negative_prompt="blur")
    assert video["object"] == "video"
    assert (video["status"], video["progress"], video["size"], video["seconds"]) == (
        "queued",
        0,
        "64x64",
        "1",
    )
    assert (video["num_frames"], video["seed"], video["model"]) == (17, 7, "wan2.1-tiny-random")
    queue = Queue("wanserve", connection=redis, serializer=redis_keys.SERIALIZER)
    assert queue.job_ids == [video["id"]]
    job = Job.fetch(video["id"], connection=redis, serializer=redis_keys.SERIALIZER)
    assert job.func_name == redis_keys.GENERATE_FUNCTION
    assert job.args == [video["id"]]
    assert job.timeout == 3600


def test_create_from_multipart_form_like_the_openai_sdk(client: TestClient) -> None:
    fields = {"prompt": "a red fox", "seconds": "2", "size": "96x64", "num_inference_steps": "3"}
    response = client.post("/v1/videos", files={name: (None, value) for name, value in fields.items()})
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert response.status_code == 200, response.text
    video = response.json()
    assert (video["num_frames"], video["width"], video["height"], video["num_inference_steps"]) == (
        33,
        96,
        64,
        3,
    )
    assert response.headers["openai-poll-after-ms"] == "1000"


def test_create_from_a_urlencoded_form(client: TestClient) -> None:
    response = client.post("/v1/videos", data={"prompt": "a red fox", "seconds": "1", "size": "64x64"})
    assert response.status_code == 200, response.text
    assert response.json()["num_frames"] == 17


def test_retrieve_shows_the_queue_position(client: TestClient) -> None:
    first, second = create(client), create(client)
    assert client.get(f"/v1/videos/{first['id']}").json()["queue_position"] == 0
    view = client.get(f"/v1/videos/{second['id']}").json()
    assert (view["status"], view["queue_position"]) == ("queued", 1)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"size": "65x64"}, "size", "unsupported_size"),
        ({"num_frames": 18}, "num_frames", "unsupported_frame_count"),
        ({"seconds": 1, "fps": 10}, "seconds", "unsupported_frame_count"),
        ({"num_inference_steps": 0}, "num_inference_steps", "invalid_value"),
        ({"num_inference_steps": 101}, "num_inference_steps", "invalid_value"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": "x" * 2001}, "prompt", "string_above_max_length"),
        ({"seconds": "one"}, "seconds", "invalid_value"),
        ({"guidance_scale": [1]}, "guidance_scale", "invalid_value"),
        ({"steps": 4}, "steps", "unknown_parameter"),
        ({"model": "sora-2"}, "model", "model_not_found"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_enqueues_nothing(
    client: TestClient, redis: Redis, body: dict, param: str, code: str
) -> None:
    response = client.post("/v1/videos", json={"prompt": "a red fox", **body})
    assert_error(response, 400, param, code)
    assert Queue("wanserve", connection=redis).count == 0


def test_malformed_bodies_are_400s(client: TestClient) -> None:
    assert_error(
        client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        None,
    )
    assert_error(client.post("/v1/videos", json=["a list"]), 400, None, "invalid_json")
    assert_error(client.post("/v1/videos", content=b"x", headers={"content-type": "text/plain"}), 400, None)
    assert_error(client.post("/v1/videos", json={}), 400, "prompt", "missing_required_parameter")
    upload = client.post("/v1/videos", data={"prompt": "a fox"}, files={"input_reference": ("a.png", b"png")})
    assert_error(upload, 400, "input_reference", "unsupported_parameter")


def test_unknown_ids_are_404s(client: TestClient) -> None:
    for video_id in ("video_" + "0" * 32, "nope", "video_..", "video_%2E%2E"):
        assert_error(client.get(f"/v1/videos/{video_id}"), 404, "video_id", "video_not_found")
        assert_error(client.get(f"/v1/videos/{video_id}/content"), 404, "video_id")
        assert_error(client.delete(f"/v1/videos/{video_id}"), 404, "video_id")
    # An encoded slash never reaches a handler: the route does not match.
    assert client.get("/v1/videos/..%2F..%2Fetc%2Fpasswd/content").status_code == 404


def test_content_of_a_video_not_yet_completed_is_a_409(client: TestClient) -> None:
    video = create(client)
    assert_error(client.get(f"/v1/videos/{video['id']}/content"), 409, "video_id", "video_not_ready")
    assert_error(client.get(f"/v1/videos/{video['id']}/content?variant=gif"), 400, "variant")


def test_list_pages_newest_first_with_a_cursor(client: TestClient) -> None:
    ids = [create(client)["id"] for _ in range(5)]
    page = client.get("/v1/videos?limit=2").json()
    assert [v["id"] for v in page["data"]] == ids[::-1][:2]
    assert (page["has_more"], page["last_id"], page["object"]) == (True, ids[3], "list")
    rest = client.get(f"/v1/videos?limit=10&after={page['last_id']}").json()
    assert [v["id"] for v in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False
    oldest = client.get("/v1/videos?order=asc&limit=1").json()
    assert oldest["data"][0]["id"] == ids[0]
    assert_error(client.get("/v1/videos?limit=0"), 400, "limit")
    assert_error(client.get("/v1/videos?order=sideways"), 400, "order")
    assert_error(client.get("/v1/videos?after=video_" + "f" * 32), 400, "after", "invalid_cursor")


def test_delete_cancels_a_queued_job(client: TestClient, redis: Redis) -> None:
    video = create(client)
    response = client.delete(f"/v1/videos/{video['id']}")
    assert response.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
    assert not Job.exists(video["id"], connection=redis), "the queued job went with the video"
    assert Queue("wanserve", connection=redis).count == 0
    assert_error(client.get(f"/v1/videos/{video['id']}"), 404, "video_id")
    assert client.get("/v1/videos").json()["data"] == []


def test_a_job_that_failed_before_the_worker_recorded_it_shows_failed(
    client: TestClient, redis: Redis
) -> None:
    video = create(client)
    job = Job.fetch(video["id"], connection=redis, serializer=redis_keys.SERIALIZER)
    # What RQ does when a worker dies mid-job and its abandoned job is cleaned up: the job moves to
    # the failed registry while our record still says queued.
    queue = Queue("wanserve", connection=redis, serializer=redis_keys.SERIALIZER)
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    view = client.get(f"/v1/videos/{video['id']}").json()
    assert view["status"] == "failed"
    assert view["error"]["code"] == "worker_failed"


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "workers": {"loading": 0, "idle": 0, "busy": 0, "draining": 0}}
    models = client.get("/v1/models").json()["data"]
    assert models[0]["id"] == "wan2.1-tiny-random" and "64x64" in models[0]["sizes"]
    assert models[0]["workers"] == {}, "no worker serves it yet: the configured model, nobody behind it"


def test_redis_down_is_a_503_not_a_500(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert_error(client.post("/v1/videos", json={"prompt": "a fox"}), 503, None, "backend_unavailable")
        response = client.get("/v1/videos/video_" + "0" * 32)
        assert_error(response, 503, None, "backend_unavailable")
        assert response.headers["retry-after"] == "5"
