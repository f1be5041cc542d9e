"""A real browser for the tests: Debian's Chromium, driven by Playwright for Python.

Playwright's own browser download cannot work here (no network at test time), so it drives the system's
Chromium. ``make chromium`` installs it (``make test`` runs that first); a missing browser fails the test
with that advice rather than skipping it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium; ``--no-sandbox``, as the tests may run as root, where its sandbox will not start."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make chromium` (as root, it installs Debian's chromium with apt)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
