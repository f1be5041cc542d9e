"""`wanserve cache-calibrate` as a user runs it, on a copy of the tiny random model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.cache_calibration import CALIBRATION_FILE, load_calibration
from service.core.model_profile import profile_for_folder

pytestmark = pytest.mark.slow


def run_calibrate(*args: str, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "cache-calibrate", *args],
        env={**os.environ, "WANSERVE_MODEL": str(model)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cache_calibrate_writes_the_models_calibration(fresh_data_dir: Path) -> None:
    (model,) = (fresh_data_dir / "models").iterdir()
    done = run_calibrate(
        "--steps",
        "3",
        "4",
        "--prompts",
        "2",
        "--seeds",
        "1",
        "--size",
        "32x32",
        "--num-frames",
        "5",
        model=model,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {model / CALIBRATION_FILE}" in done.stdout
    assert "magcache 3 steps, cond" in done.stdout and "teacache (timestep_proj)" in done.stdout
    calibration = load_calibration(model)
    assert [curve.steps for curve in calibration.magcache] == [3, 4]
    assert calibration.magcache[0].prompts == 2
    assert calibration.source.startswith("wanserve cache-calibrate --steps 3 4 --prompts 2 --seeds 1")
    assert profile_for_folder(model).cache_calibrations == ("magcache", "teacache")


def test_cache_calibrate_refuses_bad_input_in_one_line(fresh_data_dir: Path) -> None:
    (model,) = (fresh_data_dir / "models").iterdir()
    done = run_calibrate("--steps", "3", "--prompts", "99", model=model)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("wanserve cache-calibrate: calibration takes 1 to")
    done = run_calibrate("--steps", "3", "--size", "33x33", model=model)
    assert done.returncode != 0 and "'33x33' is not supported" in done.stderr.splitlines()[-1]
    assert "calibrating" not in done.stdout  # refused before the weights load
    assert not (model / CALIBRATION_FILE).exists()
