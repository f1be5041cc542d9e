"""A command given a missing, malformed or unsafe setting exits at once with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], command: str, needle: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wanserve {command}: ") and needle in last, done.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("api",), {}, "WANSERVE_REDIS_URL is not set"),
        (("worker",), {}, "WANSERVE_REDIS_URL is not set"),
        (("api",), {"WANSERVE_JOB_TIMEOUT_S": "abc"}, "WANSERVE_JOB_TIMEOUT_S='abc'"),
        (("worker",), {"WANSERVE_LOG_LEVEL": "loud"}, "WANSERVE_LOG_LEVEL='loud'"),
        (
            ("api",),
            {"WANSERVE_REDIS_URL": "redis://127.0.0.1:1/0", "WANSERVE_WEBHOOK_SECRET": "hunter2"},
            "must start with whsec_",
        ),
        (
            ("worker",),
            {"WANSERVE_REDIS_URL": "redis://127.0.0.1:1/0", "WANSERVE_MODEL": "/no/such"},
            "WANSERVE_MODEL=",
        ),
    ],
)
def test_bad_settings_are_one_line(args: tuple[str, ...], env: dict[str, str], needle: str) -> None:
    assert_one_line_refusal(run_cli(*args, env=env), args[0], needle)


def test_an_empty_keys_file_refuses_to_serve_an_open_api(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("\n")
    env = {"WANSERVE_REDIS_URL": "redis://127.0.0.1:1/0", "WANSERVE_API_KEYS_FILE": str(keys)}
    assert_one_line_refusal(run_cli("api", env=env), "api", "holds no key")


def test_generate_checks_its_output_folder_before_loading_the_model(tmp_path: Path) -> None:
    done = run_cli("generate", "a red square", "-o", str(tmp_path / "absent" / "out.mp4"), env={})
    assert_one_line_refusal(done, "generate", "does not exist")
