"""When a step-level cache skips a step: MagCache, TeaCache and EasyCache, one branch's state each.

The rules, learned from the methods' papers and public Wan2.1 code (MagCache arXiv 2506.09045, TeaCache
arXiv 2411.19108, EasyCache arXiv 2507.02860); the hooks that run them are in :mod:`worker.cache.blockcache`,
their configs in :mod:`service.core.cache`, MagCache's curves and TeaCache's polynomial in
:mod:`service.core.cache_calibration`. Signals are computed in float32 whatever the activations' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.core.cache import EasyCacheConfig, MagCacheConfig, TeaCacheConfig
from service.core.cache_calibration import TeaFit, tea_rescaled


def leading_steps(ratio: float, num_steps: int | None) -> int:
    """The steps a ratio of the request's steps makes (half up): the steps that always compute first."""
    return int(ratio * (num_steps or 0) + 0.5)


@dataclass
class MagState:
    ratio: float = 1.0
    error: float = 0.0
    skipped: int = 0

    def computed(self) -> None:
        self.ratio, self.error, self.skipped = 1.0, 0.0, 0


def magcache_wants_skip(
    config: MagCacheConfig, ratios: Sequence[float], step: int, num_steps: int | None, state: MagState
) -> bool:
    """After the retained first steps, the product of the calibrated ratios since the last computed step
    accumulates ``|1 - product|``; skip while that stays under the threshold, at most ``max_skip_steps`` in a
    row. The caller calls ``state.computed()`` on every step that computes."""
    if step < leading_steps(config.retention_ratio, num_steps) or step >= len(ratios):
        return False
    state.ratio *= ratios[step]
    state.skipped += 1
    state.error += abs(1.0 - state.ratio)
    return state.error < config.threshold and state.skipped <= config.max_skip_steps


@dataclass
class TeaState:
    accumulated: float = 0.0
    previous: torch.Tensor | None = None


def teacache_wants_skip(
    config: TeaCacheConfig,
    fit: TeaFit,
    step: int,
    num_steps: int | None,
    signal: torch.Tensor,
    state: TeaState,
) -> tuple[bool, float | None]:
    """Every forward adds the rescaled relative L1 change of the timestep embedding since the previous step;
    skip while the sum since the last computed step stays under the threshold. Returns (skip wanted, the
    change measured). The caller sets ``state.accumulated = 0`` on every step that computes."""
    current = signal.detach().float()
    previous, state.previous = state.previous, current
    if previous is None or step < leading_steps(config.warmup_ratio, num_steps):
        return False, None
    change = float((current - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))
    state.accumulated += tea_rescaled(fit, change)
    return state.accumulated < config.threshold, change


@dataclass
class EasyState:
    previous_input: torch.Tensor | None = None
    computed_input: torch.Tensor | None = None
    computed_output: torch.Tensor | None = None
    rate: float | None = None
    error: float = 0.0


def easycache_wants_skip(
    config: EasyCacheConfig, step: int, num_steps: int | None, latents: torch.Tensor, state: EasyState
) -> tuple[bool, float | None]:
    """The output's relative change since the last computed step is estimated as the transformation rate
    (output change over input change, measured between the last two computed steps) times the input's
    change since the previous step, over the last output; skip while the estimates' sum stays under the
    threshold. The first ``warmup_ratio`` of the steps and the last one compute. Returns (skip wanted, the
    accumulated estimate). The caller sets ``state.error = 0`` on every step that computes and calls
    :func:`easycache_computed` after it."""
    current = latents.detach().float()
    previous, state.previous_input = state.previous_input, current
    forced = step < leading_steps(config.warmup_ratio, num_steps)
    forced = forced or (num_steps is not None and step >= num_steps - 1)
    if forced or previous is None or state.computed_output is None or state.rate is None:
        return False, None
    input_change = float((current - previous).abs().mean())
    state.error += state.rate * input_change / max(float(state.computed_output.abs().mean()), 1e-12)
    return state.error < config.threshold, state.error


def easycache_computed(state: EasyState, latents: torch.Tensor, output: torch.Tensor) -> None:
    """A computed step: measure the transformation rate against the last computed step, keep this one."""
    current_in, current_out = latents.detach().float(), output.detach().float()
    if state.computed_input is not None and state.computed_output is not None:
        input_change = float((current_in - state.computed_input).abs().mean())
        if input_change > 0.0:
            state.rate = float((current_out - state.computed_output).abs().mean()) / input_change
    state.computed_input, state.computed_output = current_in, current_out
