"""The step-level caches (MagCache, TeaCache, EasyCache): their rules, and their hooks on a tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from service.core.cache import AdaptiveCacheConfig, EasyCacheConfig, MagCacheConfig, TeaCacheConfig
from service.core.cache_calibration import PUBLISHED, Calibration, MagCurve, TeaFit
from tests.unit.tiny_transformer import BRANCHES, NUM_BLOCKS, forward, inputs
from worker.cache import block_cache_stats, block_cache_trace, set_block_cache
from worker.cache.stepcache import (
    EasyState,
    MagState,
    TeaState,
    easycache_computed,
    easycache_wants_skip,
    magcache_wants_skip,
    teacache_wants_skip,
)

STEPS = 8
FLAT = Calibration(magcache=(MagCurve(steps=STEPS, cond=(1.0,) * STEPS, uncond=(1.0,) * STEPS),))
"""Ratios of 1: no error ever accumulates, so only ``max_skip_steps`` and the retention stop a skip."""
STEEP = Calibration(magcache=(MagCurve(steps=STEPS, cond=(0.9,) * STEPS, uncond=(0.9,) * STEPS),))
"""Ratios of 0.9: every step adds an error of at least 0.1."""
IDENTITY = TeaFit(coefficients=(0.0, 0.0, 0.0, 1.0, 0.0), x_range=(0.0, 10.0))
"""f(x) = x: the accumulated change is the raw relative change of the timestep embedding."""


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


def magcache_schedule(config: MagCacheConfig, ratios: tuple[float, ...]) -> list[int]:
    """The steps MagCache skips on one branch (a computed step resets its state)."""
    state, skipped = MagState(), []
    for step in range(len(ratios)):
        if magcache_wants_skip(config, ratios, step, len(ratios), state):
            skipped.append(step)
        else:
            state.computed()
    return skipped


def test_magcache_on_the_published_wan_13b_curve_skips_what_its_authors_schedule() -> None:
    ratios = PUBLISHED["wan2.1-t2v-1.3b"].mag_ratios(50)
    assert ratios is not None and len(ratios) == 50
    two = magcache_schedule(MagCacheConfig(threshold=0.12, max_skip_steps=2), ratios)
    assert two == [
        *(10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26, 28, 29, 31, 32, 34, 35, 37, 38, 40, 41),
        *(43, 45, 47),
    ]
    four = magcache_schedule(MagCacheConfig(threshold=0.12, max_skip_steps=4), ratios)
    assert len(four) == 29 and four[:8] == [10, 11, 12, 13, 15, 16, 17, 18]
    assert magcache_schedule(MagCacheConfig(threshold=0.12, retention_ratio=0.5), ratios)[0] == 25


def test_teacache_accumulates_the_rescaled_change_and_computes_when_it_passes_the_threshold() -> None:
    config = TeaCacheConfig(threshold=0.25, warmup_ratio=0.0)
    state, decisions = TeaState(), []
    # Relative changes 0.1 each step: skip, skip (0.2), compute (0.3 >= 0.25: reset), skip, skip, compute.
    for step, value in enumerate([1.0, 1.1, 1.21, 1.331, 1.4641, 1.61051, 1.771561]):
        wants, _ = teacache_wants_skip(config, IDENTITY, step, 7, torch.full((4,), value), state)
        decisions.append(wants)
        if not wants:
            state.accumulated = 0.0
    assert decisions == [False, True, True, False, True, True, False]


def test_teacache_clamps_a_polynomial_that_goes_negative_outside_its_range() -> None:
    dips = TeaFit(coefficients=(0.0, 0.0, 0.0, -1.0, 0.0), x_range=(0.0, 1.0))  # f(x) = -x
    state = TeaState()
    teacache_wants_skip(TeaCacheConfig(warmup_ratio=0.0), dips, 0, 5, torch.ones(4), state)
    teacache_wants_skip(TeaCacheConfig(warmup_ratio=0.0), dips, 1, 5, torch.full((4,), 2.0), state)
    assert state.accumulated == 0.0, "a negative increment would let the cache skip for ever"


def test_easycache_estimates_the_output_change_from_the_rate_it_measured() -> None:
    config, state = EasyCacheConfig(threshold=0.5, warmup_ratio=0.0), EasyState()
    # Computed steps 0 and 1: output changes 2 per 1 of input, so the rate is 2.
    for step, (x, v) in enumerate([(0.0, 10.0), (1.0, 12.0)]):
        assert easycache_wants_skip(config, step, 10, torch.full((4,), x), state) == (False, None)
        easycache_computed(state, torch.full((4,), x), torch.full((4,), v))
    assert state.rate == pytest.approx(2.0)
    # Input moves by 1: the output is estimated to move 2 / 12 of itself, under 0.5: skip.
    wants, estimate = easycache_wants_skip(config, 2, 10, torch.full((4,), 2.0), state)
    assert wants and estimate == pytest.approx(2 / 12)
    wants, estimate = easycache_wants_skip(config, 3, 10, torch.full((4,), 4.0), state)
    assert not wants and estimate == pytest.approx(2 / 12 + 4 / 12), "the sum passed the threshold"
    assert easycache_wants_skip(config, 9, 10, torch.full((4,), 4.0), state)[0] is False, "the last step"


def run(model: WanTransformer3DModel, steps: int = STEPS) -> list[torch.Tensor]:
    """A denoising loop's passes: cond then uncond at every step; the outputs in order."""
    return [forward(model, step, branch) for step in range(steps) for branch in BRANCHES]


def skipped_steps(model: WanTransformer3DModel) -> dict[str, list[int]]:
    trace = block_cache_trace(model)
    return {b: [e["step"] for e in trace if e["branch"] == b and e["skipped"]] for b in BRANCHES}


def test_magcache_skips_every_block_and_adds_the_last_residual(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    config = MagCacheConfig(threshold=1.0, max_skip_steps=2, retention_ratio=0.25)
    set_block_cache(installed, config, num_steps=STEPS, calibration=FLAT)
    outputs = run(installed)
    assert skipped_steps(installed) == {"cond": [2, 3, 5, 6], "uncond": [2, 3, 5, 6]}
    expected = run(reference)
    computed = [i for i in range(2 * STEPS) if i // 2 not in (2, 3, 5, 6)]
    assert all(torch.equal(outputs[i], expected[i]) for i in computed[:4]), "before the first skip: exact"
    assert not torch.equal(outputs[4], expected[4]), "a skipped step reuses the residual"
    assert block_cache_stats(installed)["blocks_skipped"] == 8 * NUM_BLOCKS


def test_teacache_decides_from_the_timestep_embedding_alike_on_both_branches(
    installed: WanTransformer3DModel,
) -> None:
    set_block_cache(
        installed,
        TeaCacheConfig(threshold=0.5, warmup_ratio=0.25),
        num_steps=STEPS,
        calibration=Calibration(teacache=IDENTITY),
    )
    run(installed)
    skipped = skipped_steps(installed)
    # This model's embedding changes by 0.20-0.35 a step: a skip, then a compute once the sum passes 0.5.
    assert skipped == {"cond": [2, 4, 5, 7], "uncond": [2, 4, 5, 7]}
    changes = [e["change"] for e in block_cache_trace(installed) if "change" in e]
    assert changes and all(c > 0 for c in changes)


def test_easycache_skips_the_whole_model_and_the_unconditional_branch_follows(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    set_block_cache(installed, EasyCacheConfig(threshold=5.0, warmup_ratio=0.25), num_steps=STEPS)
    outputs = run(installed)
    skipped = skipped_steps(installed)
    assert skipped["cond"] == skipped["uncond"] and skipped["cond"] and STEPS - 1 not in skipped["cond"]
    first = skipped["cond"][0]
    for b, branch in enumerate(BRANCHES):
        # A skipped step's output is its input plus the last computed step's output minus input.
        before = forward(reference, first - 1, branch) - inputs(first - 1, branch)["hidden_states"]
        got = outputs[2 * first + b]
        assert torch.allclose(got, inputs(first, branch)["hidden_states"] + before, atol=1e-6)


def test_a_tiny_threshold_never_skips_and_stays_exact(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    expected = run(reference)
    for config, calibration in [
        (MagCacheConfig(threshold=1e-12), STEEP),
        (TeaCacheConfig(threshold=1e-12), Calibration(teacache=IDENTITY)),
        (EasyCacheConfig(threshold=1e-12), None),
    ]:
        set_block_cache(installed, config, num_steps=STEPS, calibration=calibration)
        assert all(torch.equal(a, b) for a, b in zip(run(installed), expected, strict=True)), config
        assert block_cache_stats(installed)["passes_skipped"] == 0


def test_the_calibrated_methods_refuse_to_run_without_a_calibration(
    installed: WanTransformer3DModel,
) -> None:
    with pytest.raises(ValueError, match="cache-calibrate"):
        set_block_cache(installed, MagCacheConfig(), num_steps=STEPS, calibration=Calibration())
    with pytest.raises(ValueError, match="cache-calibrate"):
        set_block_cache(installed, TeaCacheConfig(), num_steps=STEPS)


@pytest.mark.parametrize("branches", ["separate", "together"])
def test_the_adaptive_cache_decides_per_branch_or_for_both(
    installed: WanTransformer3DModel, branches: str
) -> None:
    # This model's block-0 residual changes by 0.46-0.61 a step, the unconditional branch's by less.
    config = AdaptiveCacheConfig(
        threshold=0.5,
        final_steps=0,
        max_consecutive_skips=1,
        branches=branches,  # type: ignore[arg-type]
    )
    set_block_cache(installed, config, num_steps=STEPS)
    run(installed)
    skipped = skipped_steps(installed)
    assert skipped["cond"], "the threshold skips some steps"
    together = skipped["cond"] == skipped["uncond"]
    assert together if branches == "together" else not together, skipped
