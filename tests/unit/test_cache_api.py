"""``cache`` through the HTTP API (real app and Redis, no worker): JSON, multipart, errors, video object."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.schemas import ADAPTIVE_CACHE_DEFAULTS
from service.core.settings import Settings

DIT = {"step_start": 1, "step_end": 3, "step_interval": 2, "block_start": 0, "block_end": 2}
FORM = {"prompt": "a red fox", "seconds": "1", "size": "64x64"}


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
        assert cache["config"] == ADAPTIVE_CACHE_DEFAULTS


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
