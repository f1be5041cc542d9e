"""Calibration on the tiny random model, in this process: what it measures, the file it leaves in the model
folder, the profile that then announces it, and an engine left as it was."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from service.core.cache_calibration import CALIBRATION_FILE, load_calibration, write_calibration
from service.core.model_profile import profile_for_folder
from service.core.schemas import GenerationParams
from worker.cache.calibration import GENERIC_PROMPTS, calibrate

STEPS = (3, 5)
PROMPTS = GENERIC_PROMPTS[:2]
SEEDS = (0, 1)


def hook_counts(engine: Any) -> list[int]:
    transformer = engine.pipe.transformer
    modules = (transformer.condition_embedder, transformer.blocks[0], transformer.blocks[-1])
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules]


def latents(engine: Any) -> torch.Tensor:
    params = GenerationParams(
        prompt="a red fox",
        negative_prompt="",
        width=32,
        height=32,
        num_frames=5,
        fps=16,
        num_inference_steps=3,
        guidance_scale=5.0,
        seed=3,
    )
    return engine.denoise(params).latents


@pytest.fixture(scope="module")
def calibrated(engine: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_model_dir, folder)
    hooks, before = hook_counts(engine), latents(engine)
    data = calibrate(engine, steps=STEPS, prompts=PROMPTS, seeds=SEEDS, size="32x32", num_frames=5)
    write_calibration(folder, data)
    return {"data": data, "folder": folder, "hooks": hooks, "latents": before}


def test_one_curve_per_step_count_for_each_branch(calibrated: dict[str, Any], engine: Any) -> None:
    calibration = load_calibration(calibrated["folder"])
    assert [curve.steps for curve in calibration.magcache] == list(STEPS)
    for curve in calibration.magcache:
        assert len(curve.cond) == len(curve.uncond) == curve.steps
        assert curve.cond[0] == curve.uncond[0] == 1.0
        assert all(0.2 < ratio < 5.0 for ratio in curve.cond + curve.uncond)
        assert curve.cond[1:] != curve.uncond[1:]  # each branch against its own previous step
        assert curve.flow_shift == engine.pipe.scheduler.config.flow_shift
        assert curve.prompts == len(PROMPTS)


def test_teacache_is_fitted_over_every_step_after_the_first_of_every_run(calibrated: dict[str, Any]) -> None:
    fit = load_calibration(calibrated["folder"]).teacache
    assert fit is not None and fit.signal == "timestep_proj"
    runs = len(PROMPTS) * len(SEEDS)
    assert fit.samples == runs * sum(steps - 1 for steps in STEPS) * 2  # both branches
    assert fit.steps == STEPS and len(fit.coefficients) == 5
    assert 0 < fit.x_range[0] < fit.x_range[1]
    assert calibrated["data"]["source"].startswith("worker.cache.calibration.calibrate, ")


def test_the_profile_of_the_calibrated_folder_announces_it(
    calibrated: dict[str, Any], tiny_model_dir: Path
) -> None:
    assert (calibrated["folder"] / CALIBRATION_FILE).is_file()
    assert profile_for_folder(calibrated["folder"]).cache_calibrations == ("magcache", "teacache")
    assert profile_for_folder(tiny_model_dir).cache_calibrations == ()


def test_the_engine_is_left_as_it_was(calibrated: dict[str, Any], engine: Any) -> None:
    assert hook_counts(engine) == calibrated["hooks"]
    assert torch.equal(latents(engine), calibrated["latents"])


def test_calibration_needs_both_branches(engine: Any) -> None:
    with pytest.raises(ValueError, match="guidance above 1"):
        calibrate(engine, steps=[3], prompts=PROMPTS[:1], seeds=[0], size="32x32", guidance_scale=1.0)
    with pytest.raises(ValueError, match="at least 2 steps"):
        calibrate(engine, steps=[1], prompts=PROMPTS[:1], seeds=[0], size="32x32")


def test_the_api_lists_what_the_served_model_is_calibrated_for(make_client: Callable[..., Any]) -> None:
    shapes = make_client(model=None).get("/v1/models").json()["data"][0]
    assert (shapes["id"], shapes["cache_calibrations"]) == ("wan2.1-tiny-shapes", ["magcache", "teacache"])
    tiny = make_client(model="tiny-random").get("/v1/models").json()["data"][0]
    assert tiny["cache_calibrations"] == []
