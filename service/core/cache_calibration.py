"""Per-model calibration of the step-level caches (MagCache, TeaCache): the file, its loading, its use.

``cache_calibration.json`` in a model folder, written by ``wanserve cache-calibrate``
(:mod:`worker.cache.calibration` measures it)::

    {"magcache": [{"steps": 20, "flow_shift": 3.0, "cond": [1.0, ...], "uncond": [1.0, ...], "prompts": 4}],
     "teacache": {"signal": "timestep_proj", "coefficients": [c0, c1, c2, c3, c4], "x_range": [lo, hi],
                  "steps": [20, 50], "flow_shift": 3.0, "samples": 1520},
     "source": "wanserve cache-calibrate ..., 2025-01-01"}

- ``magcache``: one curve per calibrated step count. ``cond[s]`` (``uncond[s]``) is the branch's magnitude
  ratio at step s: the mean over tokens of ``|R_s| / |R_{s-1}|``, R being the block-stack residual (output of
  the last block minus input of block 0, L2 over the hidden dim), averaged over the calibration's
  generations; step 0 has no predecessor and is 1.0. ``prompts`` counts the distinct prompts (the seeds are
  in ``source``).
- ``teacache``: ``numpy.polyfit(x, y, 4)`` (highest degree first) over every step >= 1 of every calibration
  run, both branches: x the relative L1 change of the ``signal`` between consecutive steps, y that of R.
  ``x_range`` is where the x lay: outside it the polynomial is an extrapolation.

Wan2.1-T2V 1.3B and 14B ship the published data (:data:`PUBLISHED`); a folder's own file takes precedence.
Torch- and numpy-free: the API reads it to know which methods a model is calibrated for.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "cache_calibration.json"
TEA_SIGNAL = "timestep_proj"
"""TeaCache's modulated input: the second output of the transformer's ``condition_embedder`` (Wan's e0)."""


@dataclass(frozen=True)
class MagCurve:
    """MagCache's per-step magnitude ratios for one step count, per CFG branch (index = step)."""

    steps: int
    cond: tuple[float, ...]
    uncond: tuple[float, ...]
    flow_shift: float | None = None
    """The scheduler shift it was measured with (None: not stated, as for the published curves)."""
    prompts: int | None = None


@dataclass(frozen=True)
class TeaFit:
    """TeaCache's rescaling polynomial, highest degree first, and the x range it was fitted on."""

    coefficients: tuple[float, ...]
    x_range: tuple[float, float]
    signal: str = TEA_SIGNAL
    steps: tuple[int, ...] = ()
    flow_shift: float | None = None
    samples: int | None = None


@dataclass(frozen=True)
class Calibration:
    magcache: tuple[MagCurve, ...] = ()
    """Sorted by step count, one curve per count."""
    teacache: TeaFit | None = None
    source: str = ""

    @property
    def methods(self) -> tuple[str, ...]:
        """The step-level caches this calibration serves: ``"magcache"``, ``"teacache"``."""
        return (("magcache",) if self.magcache else ()) + (("teacache",) if self.teacache else ())

    def mag_ratios(self, num_steps: int, branch: str = "cond") -> tuple[float, ...] | None:
        """The branch's curve for ``num_steps``: the curve calibrated at exactly ``num_steps``, else the
        nearest-step interpolation (:func:`nearest_interp`) of the curve with the most steps; None without
        any MagCache curve."""
        if branch not in ("cond", "uncond"):
            raise ValueError(f"branch must be 'cond' or 'uncond', not {branch!r}")
        if not self.magcache:
            return None
        exact = [curve for curve in self.magcache if curve.steps == num_steps]
        curve = exact[0] if exact else max(self.magcache, key=lambda c: c.steps)
        ratios = curve.cond if branch == "cond" else curve.uncond
        return ratios if exact else nearest_interp(ratios, num_steps)


def nearest_interp(source: Sequence[float], num_steps: int) -> tuple[float, ...]:
    """MagCache's ``nearest_interp`` (its Wan2.1 script and diffusers alike): resample a curve of M steps to
    ``num_steps`` by taking, for step i, the source step ``round(i * (M - 1) / (num_steps - 1))``, rounding
    half to even as NumPy does (Python's ``round`` does too).

    It keeps per-step ratios of the longer schedule, while one step of a shorter schedule spans several of
    them: the change it predicts is smaller than the real one (calibrate at the served count when it matters).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, not {num_steps}")
    if not source:
        raise ValueError("cannot interpolate an empty curve")
    if num_steps == 1:
        return (float(source[-1]),)
    scale = (len(source) - 1) / (num_steps - 1)
    return tuple(float(source[round(i * scale)]) for i in range(num_steps))


def tea_poly(fit: TeaFit, x: float) -> float:
    """The fitted polynomial at x (Horner; coefficients highest degree first, as ``numpy.poly1d``)."""
    value = 0.0
    for coefficient in fit.coefficients:
        value = value * x + coefficient
    return value


def tea_rescaled(fit: TeaFit, x: float) -> float:
    """TeaCache's rescaled distance: the polynomial at x, clamped at >= 0. The published polynomials go
    negative outside their fitted range, and a negative increment would lower the accumulated distance."""
    return max(0.0, tea_poly(fit, x))


# ---------------------------------------------------------------------------------------------- the file


def calibration_from_json(data: dict[str, Any]) -> Calibration:
    """Parse the file's object; ``ValueError`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("a calibration is a JSON object")
    curves = tuple(sorted((_curve(entry) for entry in data.get("magcache") or ()), key=lambda c: c.steps))
    counts = [curve.steps for curve in curves]
    if len(set(counts)) != len(counts):
        raise ValueError(f"magcache has two curves for the same step count: {counts}")
    tea = data.get("teacache")
    return Calibration(
        magcache=curves,
        teacache=_tea_fit(tea) if tea is not None else None,
        source=str(data.get("source", "")),
    )


def calibration_to_json(calibration: Calibration) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if calibration.magcache:
        data["magcache"] = [
            {
                "steps": curve.steps,
                "flow_shift": curve.flow_shift,
                "cond": list(curve.cond),
                "uncond": list(curve.uncond),
                "prompts": curve.prompts,
            }
            for curve in calibration.magcache
        ]
    if calibration.teacache is not None:
        fit = calibration.teacache
        data["teacache"] = {
            "signal": fit.signal,
            "coefficients": list(fit.coefficients),
            "x_range": list(fit.x_range),
            "steps": list(fit.steps),
            "flow_shift": fit.flow_shift,
            "samples": fit.samples,
        }
    data["source"] = calibration.source
    return data


def load_calibration(folder: Path, *, published: str | None = None) -> Calibration:
    """The folder's ``cache_calibration.json``; else, when ``published`` names a known model
    (``"wan2.1-t2v-1.3b"``, ``"wan2.1-t2v-14b"``), the published data; else an empty Calibration.

    Raises:
        ValueError: If the folder's file is not a valid calibration (naming the file).
    """
    path = folder / CALIBRATION_FILE
    if path.is_file():
        try:
            return calibration_from_json(json.loads(path.read_text()))
        except ValueError as exc:  # json.JSONDecodeError included
            raise ValueError(f"{path}: {exc}") from None
    if published is not None and published in PUBLISHED:
        return PUBLISHED[published]
    return Calibration()


def write_calibration(folder: Path, data: dict[str, Any]) -> Path:
    """Check ``data`` parses, then write it as the folder's calibration (atomically: a reader never sees
    half a file). Returns the path written."""
    calibration_from_json(data)
    path = folder / CALIBRATION_FILE
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{CALIBRATION_FILE}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def _curve(entry: Any) -> MagCurve:
    if not isinstance(entry, dict):
        raise ValueError("each magcache entry is an object")
    steps = entry.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"magcache steps must be a positive integer, not {steps!r}")
    branches = {}
    for branch in ("cond", "uncond"):
        ratios = _numbers(entry.get(branch), f"magcache[{steps}].{branch}")
        if len(ratios) != steps:
            raise ValueError(f"magcache[{steps}].{branch} has {len(ratios)} ratios, not {steps}")
        branches[branch] = ratios
    prompts = entry.get("prompts")
    return MagCurve(
        steps=steps,
        cond=branches["cond"],
        uncond=branches["uncond"],
        flow_shift=_optional_number(entry.get("flow_shift"), "magcache flow_shift"),
        prompts=int(prompts) if prompts is not None else None,
    )


def _tea_fit(entry: Any) -> TeaFit:
    if not isinstance(entry, dict):
        raise ValueError("teacache is an object")
    coefficients = _numbers(entry.get("coefficients"), "teacache.coefficients")
    if not coefficients:
        raise ValueError("teacache.coefficients is empty")
    x_range = _numbers(entry.get("x_range"), "teacache.x_range")
    if len(x_range) != 2 or x_range[0] > x_range[1]:
        raise ValueError(f"teacache.x_range must be [lo, hi] with lo <= hi, not {list(x_range)}")
    samples = entry.get("samples")
    return TeaFit(
        coefficients=coefficients,
        x_range=(x_range[0], x_range[1]),
        signal=str(entry.get("signal", TEA_SIGNAL)),
        steps=tuple(int(s) for s in entry.get("steps") or ()),
        flow_shift=_optional_number(entry.get("flow_shift"), "teacache flow_shift"),
        samples=int(samples) if samples is not None else None,
    )


def _numbers(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{what} must be a list of numbers")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{what} holds a non-finite number")
    return numbers


def _optional_number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{what} must be a number")
    return float(value)


# ------------------------------------------------------------------------------------ published Wan2.1 data

# MagCache's ratios for Wan2.1-T2V, copied as data from github.com/Zehong-Ma/MagCache at commit
# df81cb181776c2c61477c08e1d21f87fda1cd938, MagCache4Wan2.1/magcache_generate.py: line 912
# ('T2V-1.3B' in ckpt_dir) and line 910 ('T2V-14B'). 50 steps, interleaved [cond_s, uncond_s] with the
# `[1.0]*2` pad of step 0 written out; measured with the original Wan2.1 sampler (its shift is not stated;
# the script's T2V default is 5.0, so flow_shift is left None).
# fmt: off
_MAG_T2V_1_3B = (
    1.0, 1.0, 1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762,
    0.99634, 0.99685, 0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563,
    0.99511, 0.99506, 0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536,
    0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413,
    0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304,
    0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063,
    0.99005, 0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643,
    0.98504, 0.98503, 0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718,
    0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089,
    0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939,
)
_MAG_T2V_14B = (
    1.0, 1.0, 1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771,
    0.9966, 0.99658, 0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431,
    0.99533, 0.99545, 0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938,
    0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343,
    0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215,
    0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995,
    0.9887, 0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498,
    0.9838, 0.98376, 0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543,
    0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929,
    0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189,
)
# fmt: on

# TeaCache's polynomials for Wan2.1-T2V in its use_ret_steps mode (signal e0 = diffusers' timestep_proj),
# from github.com/ali-vilab/TeaCache at commit 7c10efc4702c6b619f47805f7abe4a7a08085aa0,
# TeaCache4Wan2.1/teacache_generate.py lines 881-894. Upstream keeps no fitted range: x_range is where each
# polynomial is positive (between its real roots, 0.0043140 and 0.1019156 for 1.3B, 0.0076776 and 0.0816278
# for 14B; computed here with numpy.roots), rounded inwards.
_TEA_T2V_1_3B = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
_TEA_T2V_14B = (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)

_PUBLISHED_SOURCE = (
    "published: MagCache ratios from Zehong-Ma/MagCache@df81cb1 (MagCache4Wan2.1/magcache_generate.py), "
    "TeaCache coefficients (use_ret_steps) from ali-vilab/TeaCache@7c10efc "
    "(TeaCache4Wan2.1/teacache_generate.py)"
)


def _published(
    interleaved: tuple[float, ...], coefficients: tuple[float, ...], x_range: tuple[float, float]
) -> Calibration:
    steps = len(interleaved) // 2
    return Calibration(
        magcache=(MagCurve(steps, cond=interleaved[0::2], uncond=interleaved[1::2]),),
        teacache=TeaFit(coefficients, x_range, steps=(steps,)),
        source=_PUBLISHED_SOURCE,
    )


PUBLISHED: dict[str, Calibration] = {
    "wan2.1-t2v-1.3b": _published(_MAG_T2V_1_3B, _TEA_T2V_1_3B, (0.00432, 0.10191)),
    "wan2.1-t2v-14b": _published(_MAG_T2V_14B, _TEA_T2V_14B, (0.00768, 0.08162)),
}
"""Calibrations of the released Wan2.1 text-to-video transformers, by the name their profile gets."""
