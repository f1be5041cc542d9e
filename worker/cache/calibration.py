"""Measure a model's step-level cache calibration: MagCache's ratio curves and TeaCache's polynomial.

:func:`calibrate` runs ordinary, uncached generations (text encoding and denoising; nothing is decoded)
through :meth:`WanEngine.denoise` and records, with plain torch hooks removed afterwards, at every
transformer pass:

- ``timestep_proj``, the second output of ``transformer.condition_embedder`` (TeaCache's signal), in float32;
- the block-stack residual R = output of ``blocks[-1]`` minus input of ``blocks[0]`` (token space).

From consecutive steps of the same branch it derives MagCache's ratio (mean over tokens of the L2-norm
ratio of R) and TeaCache's (x, y) pairs (relative L1 change of the signal and of R). The result is the
object that :mod:`service.core.cache_calibration` reads and ``write_calibration`` writes. One process
only: under Ulysses the hooks would see a rank's shard of the tokens.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from service.core.cache_calibration import TEA_SIGNAL, calibration_from_json
from service.core.model_profile import SHAPES_MODEL_NAME, ModelProfile
from service.core.schemas import GenerationParams, parse_create_request, resolve_params
from worker.cache.adaptive import relative_change

if TYPE_CHECKING:
    from worker.engine import WanEngine

log = logging.getLogger("wanserve.worker")

TEA_DEGREE = 4
MAG_DECIMALS = 5
"""MagCache's published curves are rounded to 5 decimals; ours too."""

# The shapes model's prompt grammar (shapes_model/data.py, which is not installed with wanserve):
# 'a {colour} {shape} moving {direction}'. Consecutive prompts differ in every word.
_SHAPE_COLOURS = ("red", "green", "blue", "yellow", "white")
_SHAPE_KINDS = ("square", "circle", "triangle")
_SHAPE_DIRECTIONS = ("left", "right", "up", "down")
SHAPES_PROMPTS = tuple(
    f"a {_SHAPE_COLOURS[i % 5]} {_SHAPE_KINDS[i % 3]} moving {_SHAPE_DIRECTIONS[i % 4]}" for i in range(60)
)
GENERIC_PROMPTS = (
    "A cat walks on the grass, realistic style.",
    "Ocean waves crash against a rocky shore at sunset, cinematic.",
    "A busy city street at night, cars passing with their lights on.",
    "A red fox runs through fresh snow in a pine forest.",
    "Two people ride bicycles along a beach on a sunny day.",
    "Clouds drift over snowy mountains, timelapse.",
    "A chef slices vegetables on a wooden board, close-up.",
    "A hot air balloon rises over green hills at dawn.",
)


def calibration_prompts(model_name: str, count: int) -> tuple[str, ...]:
    """``count`` prompts the model can draw: the shapes model's grammar for it, generic scenes otherwise."""
    prompts = SHAPES_PROMPTS if model_name == SHAPES_MODEL_NAME else GENERIC_PROMPTS
    if not 1 <= count <= len(prompts):
        raise ValueError(f"calibration takes 1 to {len(prompts)} prompts for this model, not {count}")
    return prompts[:count]


def magnitude_ratio(residual: torch.Tensor, previous: torch.Tensor) -> float:
    """MagCache's ratio: the mean over tokens of ``|R|_2 / |R_prev|_2``, the norms over the last (hidden)
    dimension, in float32 (with diffusers' 1e-8 in the denominator)."""
    norms = residual.float().norm(dim=-1)
    previous_norms = previous.float().norm(dim=-1)
    return float((norms / (previous_norms + 1e-8)).mean())


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` in float32 (TeaCache's distance)."""
    return relative_change(current, previous)[0]


@dataclass
class _Run:
    """What one generation's hooks record. The single-process loop runs each step's passes in the order
    of ``passes`` (:meth:`WanEngine._denoise`: "cond", then "uncond"), which tells a pass's branch; the
    signal, which depends on the step alone, must then be equal within a step, and is checked."""

    passes: tuple[str, ...]
    steps: int
    signal: torch.Tensor | None = None
    block_input: torch.Tensor | None = None
    count: int = 0
    step_signal: torch.Tensor | None = None
    previous_signal: dict[str, torch.Tensor] = field(default_factory=dict)
    previous_residual: dict[str, torch.Tensor] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    pairs: list[tuple[float, float]] = field(default_factory=list)

    def on_condition(self, _module: Any, _args: Any, output: Any) -> None:
        self.signal = output[1].detach().float()

    def on_first_block(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.block_input = hidden.detach().to(torch.float32, copy=True)

    def on_last_block(self, _module: Any, _args: Any, output: Any) -> None:
        assert self.signal is not None and self.block_input is not None, "hooks fired out of order"
        hidden = output[0] if isinstance(output, tuple) else output
        residual = hidden.detach().float() - self.block_input
        branch = self.passes[self.count % len(self.passes)]
        if self.count % len(self.passes) == 0:
            self.step_signal = self.signal
        elif self.step_signal is None or not torch.equal(self.signal, self.step_signal):
            raise RuntimeError("transformer passes ran out of the expected order: cannot tell the branches")
        self.count += 1
        if branch in self.previous_residual:
            previous = self.previous_residual[branch]
            self.ratios.setdefault(branch, []).append(magnitude_ratio(residual, previous))
            x = relative_l1(self.signal, self.previous_signal[branch])
            self.pairs.append((x, relative_l1(residual, previous)))
        self.previous_residual[branch] = residual
        self.previous_signal[branch] = self.signal
        self.block_input = None

    def curve(self, branch: str) -> list[float]:
        return [1.0, *self.ratios.get(branch, [])]


def calibrate(
    engine: WanEngine,
    *,
    steps: Sequence[int],
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: str | None = None,
    num_frames: int | None = None,
    guidance_scale: float | None = None,
    source: str = "worker.cache.calibration.calibrate",
) -> dict[str, Any]:
    """Calibrate MagCache and TeaCache on ``engine``'s model from uncached generations.

    Every (steps, prompt, seed) is one generation with the model's defaults (size, frames, guidance), or
    the ones given. One process only (no Ulysses, no CFG parallelism): the hooks must see every token and
    both branches.

    Args:
        engine: a single-process engine.
        steps: step counts to calibrate; one MagCache curve each, and TeaCache is fitted over all.
        prompts, seeds: each prompt runs with each seed; the curves are their mean.
        size, num_frames, guidance_scale: override the model's defaults; guidance must be above 1 (both
            branches run).
        source: what made it (the file's ``source``, with the date appended).

    Returns:
        The ``cache_calibration.json`` object (see :mod:`service.core.cache_calibration`).
    """
    if engine.parallel is not None and engine.parallel.layout.ranks > 1:
        raise ValueError("calibration runs in one process, not in a worker group")
    runs = calibration_runs(
        engine.profile,
        steps=steps,
        prompts=prompts,
        seeds=seeds,
        size=size,
        num_frames=num_frames,
        guidance_scale=guidance_scale,
    )
    measured = [_measure(engine, params, position, len(runs)) for position, params in enumerate(runs)]
    flow_shift = getattr(engine.pipe.scheduler.config, "flow_shift", None)
    data = {
        "magcache": [_mag_entry(count, measured, flow_shift, len(prompts)) for count in sorted(set(steps))],
        "teacache": _tea_entry(measured, sorted(set(steps)), flow_shift),
        "source": f"{source}, {datetime.datetime.now(datetime.UTC).date().isoformat()}",
    }
    calibration_from_json(data)  # what we hand on parses
    return data


def calibration_runs(
    profile: ModelProfile,
    *,
    steps: Sequence[int],
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: str | None = None,
    num_frames: int | None = None,
    guidance_scale: float | None = None,
) -> list[GenerationParams]:
    """The generations :func:`calibrate` runs, resolved as the API resolves a request (the model's
    defaults, no cache). Needs no weights: a command checks its arguments before they load.

    Raises:
        InvalidRequest: If the model cannot serve the size, frame count or guidance given.
        ValueError: If there is nothing to calibrate, a step count under 2, or guidance of 1 or less.
    """
    if not steps or not prompts or not seeds:
        raise ValueError("calibration needs at least one step count, prompt and seed")
    if min(steps) < 2:
        raise ValueError("calibration needs at least 2 steps per generation (ratios compare steps)")
    given = {"size": size, "num_frames": num_frames, "guidance_scale": guidance_scale}
    given = {key: value for key, value in given.items() if value is not None}
    runs = [
        resolve_params(
            parse_create_request({"prompt": prompt, "seed": seed, "num_inference_steps": count, **given}),
            profile,
            max_prompt_chars=10_000,
            max_steps=count,
        )
        for count in sorted(set(steps))
        for prompt in prompts
        for seed in seeds
    ]
    if runs[0].guidance_scale <= 1.0:
        raise ValueError(
            f"calibration needs guidance above 1 (both CFG branches), not {runs[0].guidance_scale}"
        )
    return runs


def _measure(engine: WanEngine, params: GenerationParams, position: int, total: int) -> _Run:
    transformer = engine.pipe.transformer
    run = _Run(passes=("cond", "uncond"), steps=params.num_inference_steps)
    handles = [
        transformer.condition_embedder.register_forward_hook(run.on_condition),
        transformer.blocks[0].register_forward_pre_hook(run.on_first_block, with_kwargs=True),
        transformer.blocks[-1].register_forward_hook(run.on_last_block),
    ]
    started = time.perf_counter()
    try:
        engine.denoise(params)
    finally:
        for handle in handles:
            handle.remove()
    if run.count != 2 * params.num_inference_steps:
        raise RuntimeError(f"expected {2 * params.num_inference_steps} transformer passes, saw {run.count}")
    log.info(
        "calibration run %d/%d: %d steps, seed %d, %r in %.1f s",
        position + 1,
        total,
        params.num_inference_steps,
        params.seed,
        params.prompt,
        time.perf_counter() - started,
    )
    return run


def _mag_entry(steps: int, runs: list[_Run], flow_shift: float | None, prompts: int) -> dict[str, Any]:
    mine = [run for run in runs if run.steps == steps]
    entry: dict[str, Any] = {"steps": steps, "flow_shift": flow_shift}
    for branch in ("cond", "uncond"):
        mean = np.mean([run.curve(branch) for run in mine], axis=0)
        entry[branch] = [round(float(v), MAG_DECIMALS) for v in mean]
    entry["prompts"] = prompts
    return entry


def _tea_entry(runs: list[_Run], steps: list[int], flow_shift: float | None) -> dict[str, Any]:
    x = np.array([pair[0] for run in runs for pair in run.pairs])
    y = np.array([pair[1] for run in runs for pair in run.pairs])
    return {
        "signal": TEA_SIGNAL,
        "coefficients": fit_polynomial(x, y),
        "x_range": [float(x.min()), float(x.max())],
        "steps": steps,
        "flow_shift": flow_shift,
        "samples": len(x),
    }


def fit_polynomial(x: np.ndarray, y: np.ndarray, degree: int = TEA_DEGREE) -> list[float]:
    """``numpy.polyfit(x, y, degree)``, highest degree first. x depends on the timestep alone, so few step
    counts give few distinct x: the degree is then lowered to what they determine, and the coefficients
    padded with leading zeros so that there are always ``degree + 1``."""
    fitted = min(degree, len(np.unique(x)) - 1)
    if fitted < 0:
        raise ValueError("no (x, y) pairs to fit")
    coefficients = np.polyfit(x, y, fitted)
    return [0.0] * (degree - fitted) + [float(c) for c in coefficients]
