"""The step-level caches' calibration: its file, the published Wan2.1 data, nearest-step interpolation,
TeaCache's polynomial, the measures it is made of, and the profile field that announces it."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.core.cache_calibration import (
    CALIBRATION_FILE,
    PUBLISHED,
    Calibration,
    MagCurve,
    TeaFit,
    calibration_from_json,
    calibration_to_json,
    load_calibration,
    nearest_interp,
    tea_poly,
    tea_rescaled,
    write_calibration,
)
from service.core.model_profile import (
    PROFILE_FILE,
    SHAPES_PROFILE,
    SHIPPED_SHAPES_FOLDER,
    TINY_PROFILE,
    ModelProfile,
    profile_for_folder,
    resolve_profile,
)
from shapes_model.data import COLOURS, DIRECTIONS, SHAPES
from worker.cache.calibration import (
    GENERIC_PROMPTS,
    calibration_prompts,
    fit_polynomial,
    magnitude_ratio,
    relative_l1,
)
from worker.tiny_model import SHAPES_MODEL_DIR

BOTH = ("magcache", "teacache")


def calibration_data(steps: tuple[int, ...] = (4,), teacache: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "magcache": [
            {
                "steps": n,
                "flow_shift": 3.0,
                "cond": [1.0] + [0.99 - 0.01 * s for s in range(1, n)],
                "uncond": [1.0] + [0.98 - 0.01 * s for s in range(1, n)],
                "prompts": 2,
            }
            for n in steps
        ],
        "source": "a test",
    }
    if teacache:
        data["teacache"] = {
            "signal": "timestep_proj",
            "coefficients": [0.0, 0.0, 1.0, 2.0, 0.5],
            "x_range": [0.01, 0.2],
            "steps": list(steps),
            "flow_shift": 3.0,
            "samples": 12,
        }
    return data


def write_transformer_config(folder: Path, layers: int, heads: int) -> Path:
    (folder / "transformer").mkdir(parents=True)
    config = {"num_layers": layers, "num_attention_heads": heads, "attention_head_dim": 128}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    return folder


# ----------------------------------------------------------------------------------- published data


@pytest.mark.parametrize(
    ("model", "first", "last"),
    [
        ("wan2.1-t2v-1.3b", (1.0124, 1.02213), (0.81838, 0.81939)),
        ("wan2.1-t2v-14b", (1.02504, 1.03017), (0.86111, 0.86189)),
    ],
)
def test_the_published_curves_are_de_interleaved_into_50_steps_per_branch(
    model: str, first: tuple[float, float], last: tuple[float, float]
) -> None:
    (curve,) = PUBLISHED[model].magcache
    assert curve.steps == 50 and len(curve.cond) == len(curve.uncond) == 50
    assert (curve.cond[0], curve.uncond[0]) == (1.0, 1.0)  # step 0's pad
    assert (curve.cond[1], curve.uncond[1]) == first  # upstream's a[2], a[3]
    assert (curve.cond[-1], curve.uncond[-1]) == last
    assert PUBLISHED[model].mag_ratios(50) == curve.cond
    assert PUBLISHED[model].mag_ratios(50, "uncond") == curve.uncond


def magcache_skips(
    ratios: tuple[float, ...], threshold: float, max_skips: int, retention: float = 0.2
) -> list[int]:
    """MagCache's rule as upstream runs it (the spec's §1.1, per-branch retention ``int(r·N + 0.5)``)."""
    skipped, ratio, error, run = [], 1.0, 0.0, 0
    for step, gamma in enumerate(ratios):
        if step < int(retention * len(ratios) + 0.5):
            continue
        ratio, run = ratio * gamma, run + 1
        error += abs(1 - ratio)
        if error < threshold and run <= max_skips:
            skipped.append(step)
        else:
            ratio, error, run = 1.0, 0.0, 0
    return skipped


def test_the_published_curves_give_the_schedules_upstream_gives() -> None:
    # Vectors from the spec's simulation of upstream's rule on upstream's arrays (cache_methods.md §1.1).
    small, large = PUBLISHED["wan2.1-t2v-1.3b"], PUBLISHED["wan2.1-t2v-14b"]
    every_third = [s for start in range(10, 41, 3) for s in (start, start + 1)] + [43, 45, 47]
    assert magcache_skips(small.mag_ratios(50) or (), 0.12, 2) == every_third
    assert len(magcache_skips(small.mag_ratios(50) or (), 0.12, 4)) == 29
    assert len(magcache_skips(large.mag_ratios(50) or (), 0.24, 6)) == 32
    assert magcache_skips(small.mag_ratios(50, "uncond") or (), 0.12, 2) == every_third
    thirty = [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27]
    assert magcache_skips(small.mag_ratios(30) or (), 0.12, 2) == thirty


def test_the_published_teacache_polynomials_are_upstreams_and_positive_on_their_range() -> None:
    small, large = PUBLISHED["wan2.1-t2v-1.3b"].teacache, PUBLISHED["wan2.1-t2v-14b"].teacache
    assert small is not None and large is not None
    assert small.coefficients == (-5.21862437e4, 9.23041404e3, -5.28275948e2, 1.36987616e1, -4.99875664e-2)
    assert large.coefficients == (-3.03318725e5, 4.90537029e4, -2.65530556e3, 5.87365115e1, -3.15583525e-1)
    for fit in (small, large):
        assert fit.signal == "timestep_proj"
        lo, hi = fit.x_range
        assert all(tea_poly(fit, x) > 0 for x in np.linspace(lo, hi, 200))
        assert tea_poly(fit, lo - 0.001) < 0 and tea_poly(fit, hi + 0.001) < 0  # the range is all of it
    assert tea_poly(small, 0.15) == pytest.approx(-5.1, abs=0.05)  # the spec's warning
    assert tea_rescaled(small, 0.15) == 0.0


# ------------------------------------------------------------------------------------- interpolation


def test_nearest_interpolation_picks_upstreams_indices() -> None:
    picked = nearest_interp(tuple(float(i) for i in range(50)), 30)
    expected = [0, 2, 3, 5, 7, 8, 10, 12, 14, 15, 17, 19, 20, 22, 24, 25, 27, 29, 30, 32, 34, 35, 37, 39]
    assert picked == tuple(float(i) for i in [*expected, 41, 42, 44, 46, 47, 49])


def test_nearest_interpolation_rounds_half_to_even_as_numpy() -> None:
    source = tuple(float(i) for i in range(6))
    assert nearest_interp(source, 3) == (0.0, 2.0, 5.0)  # 2.5 rounds to 2
    assert list(nearest_interp(source, 3)) == [source[int(i)] for i in np.round(np.arange(3) * 2.5)]
    assert nearest_interp(source, 1) == (5.0,)
    assert nearest_interp(source, 6) == source
    with pytest.raises(ValueError):
        nearest_interp(source, 0)


def test_mag_ratios_prefers_the_exact_step_count_else_interpolates_the_longest_curve() -> None:
    calibration = calibration_from_json(calibration_data(steps=(4, 8)))
    eight = calibration.magcache[1]
    assert calibration.mag_ratios(4) == calibration.magcache[0].cond
    assert calibration.mag_ratios(4, "uncond") == calibration.magcache[0].uncond
    assert calibration.mag_ratios(5) == nearest_interp(eight.cond, 5)
    assert calibration.mag_ratios(16, "uncond") == nearest_interp(eight.uncond, 16)
    assert Calibration().mag_ratios(20) is None
    with pytest.raises(ValueError, match="branch"):
        calibration.mag_ratios(4, "both")


def test_the_teacache_polynomial_is_highest_degree_first_and_clamped() -> None:
    fit = TeaFit(coefficients=(3.0, -2.0, 0.5, 1.0, -0.1), x_range=(0.0, 1.0))
    for x in (0.0, 0.05, 0.3, 2.0):
        assert tea_poly(fit, x) == pytest.approx(float(np.polyval(fit.coefficients, x)))
    assert tea_rescaled(fit, 0.0) == 0.0  # -0.1 clamped
    assert tea_rescaled(fit, 0.3) == pytest.approx(float(np.polyval(fit.coefficients, 0.3)))


# --------------------------------------------------------------------------------------------- the file


def test_the_file_round_trips(tmp_path: Path) -> None:
    data = calibration_data(steps=(8, 4))
    path = write_calibration(tmp_path, data)
    assert path == tmp_path / CALIBRATION_FILE
    assert json.loads(path.read_text()) == data
    calibration = load_calibration(tmp_path)
    assert [curve.steps for curve in calibration.magcache] == [4, 8]  # sorted
    assert calibration.methods == BOTH
    assert calibration.teacache == TeaFit(
        (0.0, 0.0, 1.0, 2.0, 0.5), (0.01, 0.2), "timestep_proj", (8, 4), 3.0, 12
    )
    assert calibration_from_json(calibration_to_json(calibration)) == calibration
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]  # no staging file left behind


def test_methods_name_what_is_present() -> None:
    assert calibration_from_json(calibration_data(teacache=False)).methods == ("magcache",)
    assert calibration_from_json({"teacache": calibration_data()["teacache"]}).methods == ("teacache",)
    assert Calibration().methods == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["magcache"][0].update(cond=[1.0, 0.9]), "has 2 ratios, not 4"),
        (lambda d: d["magcache"].append(dict(d["magcache"][0])), "same step count"),
        (lambda d: d["magcache"][0].update(steps=0), "positive integer"),
        (lambda d: d["magcache"][0]["uncond"].__setitem__(1, "x"), "list of numbers"),
        (lambda d: d["teacache"].update(x_range=[0.2, 0.1]), "lo <= hi"),
        (lambda d: d["teacache"].update(coefficients=[]), "empty"),
    ],
)
def test_a_bad_file_is_refused_naming_it(tmp_path: Path, change: Any, message: str) -> None:
    data = calibration_data()
    change(data)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as raised:
        load_calibration(tmp_path)
    assert str(tmp_path / CALIBRATION_FILE) in str(raised.value)
    with pytest.raises(ValueError, match=message):
        write_calibration(tmp_path / "elsewhere", data)  # checked before anything is written


def test_non_finite_ratios_and_broken_json_are_refused(tmp_path: Path) -> None:
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(calibration_data()).replace("0.98", "NaN", 1))
    with pytest.raises(ValueError, match="non-finite"):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{")
    with pytest.raises(ValueError, match=CALIBRATION_FILE):
        load_calibration(tmp_path)


def test_a_folders_file_wins_over_the_published_data(tmp_path: Path) -> None:
    assert load_calibration(tmp_path, published="wan2.1-t2v-1.3b") == PUBLISHED["wan2.1-t2v-1.3b"]
    assert load_calibration(tmp_path, published="some-other-model") == Calibration()
    assert load_calibration(tmp_path) == Calibration()
    write_calibration(tmp_path, calibration_data(teacache=False))
    own = load_calibration(tmp_path, published="wan2.1-t2v-1.3b")
    assert own.methods == ("magcache",) and own.magcache[0].steps == 4


# ------------------------------------------------------------------------------------------ the profile


def test_known_wan_models_announce_the_published_calibration(tmp_path: Path) -> None:
    assert profile_for_folder(write_transformer_config(tmp_path / "a", 30, 12)).cache_calibrations == BOTH
    assert profile_for_folder(write_transformer_config(tmp_path / "b", 40, 40)).cache_calibrations == BOTH
    assert profile_for_folder(write_transformer_config(tmp_path / "c", 7, 2)).cache_calibrations == ()


def test_a_folders_calibration_file_is_announced_also_next_to_a_profile_file(tmp_path: Path) -> None:
    folder = write_transformer_config(tmp_path / "m", 2, 2)
    (folder / PROFILE_FILE).write_text(
        json.dumps({**TINY_PROFILE.to_json(), "cache_calibrations": ["teacache"]})
    )
    assert profile_for_folder(folder).cache_calibrations == ()  # the file decides, not a stale profile
    write_calibration(folder, calibration_data(teacache=False))
    assert profile_for_folder(folder).cache_calibrations == ("magcache",)
    assert profile_for_folder(folder, "renamed").cache_calibrations == ("magcache",)


def test_the_profile_field_round_trips_and_older_profiles_lack_it() -> None:
    profile = dataclasses.replace(TINY_PROFILE, cache_calibrations=BOTH)
    registered = json.loads(json.dumps(profile.to_json()))
    assert registered["cache_calibrations"] == list(BOTH)
    assert ModelProfile.from_json(registered) == profile
    old = {key: value for key, value in registered.items() if key != "cache_calibrations"}
    assert ModelProfile.from_json(old).cache_calibrations == ()
    assert resolve_profile("/nowhere", None, {"old": json.dumps(old)}).cache_calibrations == ()


def test_the_shipped_shapes_model_is_calibrated_at_its_steps_and_50() -> None:
    assert SHAPES_MODEL_DIR.resolve() == SHIPPED_SHAPES_FOLDER
    assert SHAPES_PROFILE.cache_calibrations == BOTH
    assert resolve_profile(None, None, {}).cache_calibrations == BOTH
    calibration = load_calibration(SHAPES_MODEL_DIR)
    shift = json.loads((SHAPES_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())["flow_shift"]
    assert [curve.steps for curve in calibration.magcache] == [SHAPES_PROFILE.default_steps, 50]
    assert all(curve.flow_shift == shift and curve.cond[0] == 1.0 for curve in calibration.magcache)
    assert calibration.teacache is not None and calibration.teacache.steps == (
        SHAPES_PROFILE.default_steps,
        50,
    )
    lo, hi = calibration.teacache.x_range
    assert all(tea_poly(calibration.teacache, x) > 0 for x in np.linspace(lo, hi, 100))


# ------------------------------------------------------------------------------------ the measurements


def test_the_magnitude_ratio_is_the_mean_over_tokens_of_the_norm_ratios() -> None:
    previous = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # token norms 5 and 2
    current = torch.tensor([[[0.0, 10.0], [1.0, 0.0]]])  # token norms 10 and 1
    assert magnitude_ratio(current, previous) == pytest.approx((10 / 5 + 1 / 2) / 2)
    assert magnitude_ratio(current.bfloat16(), previous.bfloat16()) == pytest.approx(1.25)


def test_the_relative_l1_change_is_mean_over_mean() -> None:
    previous = torch.tensor([1.0, -2.0, 3.0, -2.0])
    assert relative_l1(previous + torch.tensor([0.5, 0.0, 0.0, -0.5]), previous) == pytest.approx(1 / 8)


def test_the_fit_is_numpys_quartic_and_keeps_five_coefficients_with_few_distinct_x() -> None:
    x = np.linspace(0.01, 0.3, 40)
    truth = [50.0, -20.0, 3.0, 1.5, 0.01]
    assert fit_polynomial(x, np.polyval(truth, x)) == pytest.approx(truth, rel=1e-6)
    few = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    coefficients = fit_polynomial(few, 2 * few**2 + 1)
    assert len(coefficients) == 5 and coefficients[:2] == [0.0, 0.0]
    assert coefficients[2:] == pytest.approx([2.0, 0.0, 1.0], abs=1e-9)
    assert not any(math.isnan(c) for c in coefficients)


def test_the_shapes_model_is_calibrated_with_prompts_it_was_trained_on() -> None:
    prompts = calibration_prompts(SHAPES_PROFILE.name, 12)
    assert len(set(prompts)) == 12
    for prompt in prompts:
        a, colour, shape, moving, direction = prompt.split()
        assert (a, moving) == ("a", "moving")
        assert colour in COLOURS and shape in SHAPES and direction in DIRECTIONS
    assert len({p.split()[1] for p in prompts[:5]}) == 5  # the first few already differ in colour
    assert calibration_prompts("wan2.1-t2v-1.3b", 3) == GENERIC_PROMPTS[:3]
    with pytest.raises(ValueError, match="1 to"):
        calibration_prompts("wan2.1-t2v-1.3b", len(GENERIC_PROMPTS) + 1)


def test_a_mag_curve_needs_no_more_than_steps_and_ratios() -> None:
    curve = MagCurve(2, (1.0, 0.9), (1.0, 0.8))
    assert Calibration(magcache=(curve,)).mag_ratios(2, "uncond") == (1.0, 0.8)
