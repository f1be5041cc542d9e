"""``cache`` through the HTTP API (real app and Redis, no worker): JSON, multipart, errors, video object,
and block ranges checked against the served model's layer count at create."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.core import redis_keys
from service.core.cache import AdaptiveCacheConfig, dit_cache_preset
from service.core.model_profile import TINY_PROFILE
from service.core.settings import Settings

DIT = {"step_start": 1, "step_end": 3, "step_interval": 2, "block_start": 0, "block_end": 2}
FORM = {"prompt": "a red fox", "seconds": "1", "size": "64x64"}
LAYERS = TINY_PROFILE.num_layers
assert LAYERS == 2


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_json_object_and_multipart_json_string_give_the_same_cache(client: TestClient) -> None:
    from_json = client.post("/v1/videos", json={"prompt": "a red fox", "cache": DIT})
    from_form = client.post("/v1/videos", files={key: (None, value) for key, value in FORM.items()}
                            | {"cache": (None, json.dumps(DIT))})  # fmt: skip
    for response in (from_json, from_form):
        assert response.status_code == 200, response.text
        cache = response.json()["cache"]
        assert (cache["method"], cache["preset"], cache["config"]) == ("dit", None, DIT)
        assert cache["blocks_skipped"] is None  # until the worker reports
    fetched = client.get(f"/v1/videos/{from_form.json()['id']}").json()
    assert fetched["cache"] == from_form.json()["cache"]


@pytest.mark.parametrize(
    ("value", "method", "preset"),
    [(None, "none", None), ("fast", "dit", "fast"), ("adaptive", "adaptive", None)],
)
def test_names_in_a_form(client: TestClient, value: str | None, method: str, preset: str | None) -> None:
    data = FORM if value is None else {**FORM, "cache": value}
    response = client.post("/v1/videos", data=data)
    assert response.status_code == 200, response.text
    cache = response.json()["cache"]
    assert (cache["method"], cache["preset"]) == (method, preset)
    if method == "adaptive":
        assert cache["config"] == AdaptiveCacheConfig().to_json()
    if method == "dit":  # sized to the model's layers and the request's steps at create
        assert cache["config"] == dit_cache_preset("fast", TINY_PROFILE.default_steps, LAYERS).to_json()


@pytest.mark.parametrize(
    "cache",
    ["turbo", 3, {"step_start": 1}, {**DIT, "block_end": 0}, "{oops", '{"a":' * 50_000, "x" * 100_000],
)
def test_bad_cache_is_a_400_naming_cache(client: TestClient, cache: object) -> None:
    response = client.post("/v1/videos", json={"prompt": "a red fox", "cache": cache})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "cache"
    assert "cache" in error["message"]
    assert len(error["message"]) < 1000


@pytest.mark.parametrize("block_end", [LAYERS + 1, 99])
def test_blocks_beyond_the_model_are_a_400_at_create(
    client: TestClient, redis: Redis, block_end: int
) -> None:
    for body in (
        {"prompt": "a red fox", "cache": {**DIT, "block_end": block_end}},
        {**FORM, "cache": json.dumps({**DIT, "block_end": block_end})},
    ):
        response = client.post("/v1/videos", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "cache"
        assert f"block_end ({block_end})" in error["message"]
        assert f"{LAYERS} transformer blocks" in error["message"]
    assert client.get("/v1/videos").json()["data"] == []  # nothing was accepted
    ok = client.post("/v1/videos", json={"prompt": "a red fox", "cache": {**DIT, "block_end": LAYERS}})
    assert ok.status_code == 200, ok.text


def test_a_profile_without_a_layer_count_skips_the_range_check(
    make_client: Callable[..., TestClient], redis: Redis
) -> None:
    """An older worker registered its profile without ``num_layers``: the API cannot check or size, the
    worker sizes presets; nothing crashes."""
    old_profile = {key: value for key, value in TINY_PROFILE.to_json().items() if key != "num_layers"}
    redis.hset(
        redis_keys.MODEL_REGISTRY_KEY, "wan-old-worker", json.dumps(old_profile | {"name": "wan-old-worker"})
    )
    client = make_client(model="/not/on/this/machine")
    far = client.post("/v1/videos", json={"prompt": "a red fox", "cache": {**DIT, "block_end": 99}})
    assert far.status_code == 200, far.text
    assert far.json()["model"] == "wan-old-worker"
    assert far.json()["cache"]["config"] == {**DIT, "block_end": 99}
    preset = client.post("/v1/videos", json={"prompt": "a red fox", "cache": "fast"})
    assert preset.status_code == 200, preset.text
    assert (preset.json()["cache"]["preset"], preset.json()["cache"]["config"]) == ("fast", None)


@pytest.mark.parametrize("method", ["magcache", "teacache"])
def test_a_calibrated_method_on_a_model_without_calibration_is_a_400_that_says_how(
    client: TestClient, redis: Redis, method: str
) -> None:
    for cache in (method, {"method": method, "threshold": 0.2}):
        response = client.post("/v1/videos", json={"prompt": "a red fox", "cache": cache})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("cache", "cache_not_calibrated")
        assert "wanserve cache-calibrate" in error["message"] and "easycache" in error["message"]
    assert not redis.keys(redis_keys.video_key("*")), "nothing was queued"


@pytest.mark.parametrize(
    "cache",
    [
        {"method": "easycache", "threshold": 0},
        {"method": "easycache", "threshold": float("nan")},
        {"method": "easycache", "warmup_ratio": 1.0},
        {"method": "easycache", "retention_ratio": 0.2},
        {"method": "magcache", "max_skip_steps": 0},
        {"method": "teacache", "threshold": True},
        {"method": "adaptive", "branches": "sideways"},
        {"method": "adaptive", "branches": ["together"]},
    ],
)
def test_bad_step_cache_fields_are_a_400(client: TestClient, cache: dict[str, object]) -> None:
    body = json.dumps({"prompt": "a red fox", "cache": cache}, allow_nan=True)
    response = client.post("/v1/videos", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cache"


def test_easycache_needs_no_calibration(client: TestClient) -> None:
    response = client.post("/v1/videos", data={**FORM, "cache": "easycache"})
    assert response.status_code == 200, response.text
    cache = response.json()["cache"]
    assert (cache["method"], cache["config"]) == ("easycache", {"threshold": 0.07, "warmup_ratio": 0.2})
    custom = {"method": "easycache", "threshold": 0.1, "warmup_ratio": 0.3}
    response = client.post("/v1/videos", json={"prompt": "a red fox", "cache": custom})
    assert response.json()["cache"]["config"] == {"threshold": 0.1, "warmup_ratio": 0.3}
