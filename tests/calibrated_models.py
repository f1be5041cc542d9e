"""The tiny model with a made-up calibration, so that MagCache and TeaCache run on it in tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from service.core.cache_calibration import write_calibration


def flat_calibration(steps: int, source: str) -> dict[str, Any]:
    """MagCache's magnitude ratios 0.98 after the first of ``steps`` steps (so its error grows by a known
    amount per skip), and TeaCache's rescale f(x) = x (the accumulated change is the raw change of the
    timestep embedding)."""
    ratios = [1.0] + [0.98] * (steps - 1)
    return {
        "magcache": [{"steps": steps, "cond": ratios, "uncond": list(ratios)}],
        "teacache": {"coefficients": [0.0, 0.0, 0.0, 1.0, 0.0], "x_range": [0.0, 10.0]},
        "source": source,
    }


def calibrated_copy(model_dir: Path, folder: Path, calibration: dict[str, Any]) -> Path:
    """A copy of ``model_dir`` in ``folder``/model with ``calibration`` written into it."""
    copy = folder / "model"
    shutil.copytree(model_dir, copy)
    write_calibration(copy, calibration)
    return copy
