"""Fixtures of the distributed tests: an API client and a factory of real worker groups."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.api.app import create_app
from service.core import redis_keys
from service.core.settings import Settings
from tests.distributed.groups import Group
from tests.processes import wait_until


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def start_group(settings: Settings, redis: Redis, tmp_path: Path):
    started: list[Group] = []

    def start(*args: str, entry: list[str] | None = None, **env: str) -> Group:
        base_env = {
            "WANSERVE_REDIS_URL": settings.redis_url or "",
            "WANSERVE_DATA_DIR": str(settings.data_dir),
            "WANSERVE_STORAGE_DIR": str(settings.videos_dir),
            "WANSERVE_DIST_TIMEOUT_S": "20",
            **env,
        }
        command = entry or [sys.executable, "-m", "cli.main", "worker"]
        group = Group([*command, *args], base_env, tmp_path / f"group-{len(started)}.log")
        started.append(group)
        wait_until(
            lambda: redis.hlen(redis_keys.MODEL_REGISTRY_KEY) > 0 or group.process.poll() is not None,
            120,
            "ranks",
        )
        assert group.process.poll() is None, group.log
        return group

    yield start
    for group in started:
        group.kill()
