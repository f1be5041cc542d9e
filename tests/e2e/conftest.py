"""Real processes: `wanserve api`, `wanserve worker`, `wanserve dev`, started as a user would start them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.processes import Processes
from tests.s3_server import s3_bucket, s3_server  # noqa: F401 (fixtures for the tests here)

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    yield group
    group.stop_all()


@pytest.fixture
def fresh_data_dir(data_dir: Path, tmp_path: Path) -> Path:
    """A data dir of its own, with the session's tiny model copied in (no regeneration)."""
    target = tmp_path / "data"
    shutil.copytree(data_dir / "models", target / "models")
    return target


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, one per test module (each test opens its own context in it); closed with
    the module, so that Playwright's event loop never outlives the tests that drive it."""
    from tests.browser import chromium  # only the browser tests need Playwright installed

    with chromium() as launched:
        yield launched
