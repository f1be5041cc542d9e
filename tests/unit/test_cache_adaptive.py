"""The block cache installed once and switched per request: off (bit-exact), DiTCache, adaptive."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from service.core.cache import AdaptiveCacheConfig, DiTCacheConfig
from tests.unit.tiny_transformer import NUM_BLOCKS, forward, forward_with_range, inputs, make_transformer
from worker.cache import (
    apply_dit_cache,
    block_cache_stats,
    block_cache_trace,
    install_block_cache,
    relative_change,
    remove_block_cache,
    set_block_cache,
)
from worker.cache.blockcache import _CP_INPUT_HOOK_PREFIX


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


def residual_of_block0(model: WanTransformer3DModel, step: int) -> torch.Tensor:
    """``out(0) - in(0)`` of an unhooked model at ``step``."""
    _, block_in, block_out = forward_with_range(model, step, (0, 1))
    return block_out - block_in


def test_installed_but_off_is_bit_exact_and_needs_no_cache_context(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    for step in range(3):
        assert torch.equal(forward(installed, step), forward(reference, step))
    # Off touches no per-branch state, so a forward outside cache_context() works as unhooked.

    assert torch.equal(installed(**inputs(0, "cond"))[0], reference(**inputs(0, "cond"))[0])
    assert block_cache_stats(installed) == {
        "blocks_computed": 4 * NUM_BLOCKS,
        "blocks_skipped": 0,
        "passes": 4,
        "passes_skipped": 0,
        "cond_steps_skipped": 0,
        "uncond_steps_skipped": 0,
    }


def test_switching_per_request_matches_a_fixed_dit_cache(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    schedule = DiTCacheConfig(step_start=1, step_end=5, step_interval=2, block_start=1, block_end=3)
    static = make_transformer()
    apply_dit_cache(static, schedule)
    expected = [forward(static, step) for step in range(5)]

    for request in range(2):  # a DiTCache request, an uncached one, the DiTCache request again
        set_block_cache(installed, schedule)
        assert all(torch.equal(forward(installed, step), expected[step]) for step in range(5)), request
        set_block_cache(installed, None)
        assert all(torch.equal(forward(installed, step), forward(reference, step)) for step in range(3))
    set_block_cache(installed, schedule)
    for step in range(5):
        forward(installed, step)
    assert block_cache_stats(installed) == {
        "blocks_computed": 5 * NUM_BLOCKS - 4,
        "blocks_skipped": 4,
        "passes": 5,
        "passes_skipped": 2,
        "cond_steps_skipped": 2,
        "uncond_steps_skipped": 0,
    }


def test_adaptive_skips_below_threshold_and_adds_the_delta_after_block_0(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    # Decide from the real residual changes of this model: skip step 1 and 3, compute step 2.
    r = [residual_of_block0(reference, step) for step in range(4)]
    change_1 = relative_change(r[1], r[0])[0]
    config = AdaptiveCacheConfig(threshold=2.0, warmup_steps=1, final_steps=0, max_consecutive_skips=1)
    assert change_1 < config.threshold  # random latents per step still move block 0 by less than 200 %
    set_block_cache(installed, config, num_steps=4)

    assert torch.equal(forward(installed, 0), forward(reference, 0))  # warm-up: computes
    _, block_in, block_out = forward_with_range(reference, 0, (1, NUM_BLOCKS))
    delta = block_out - block_in
    expected = forward_with_range(reference, 1, (1, NUM_BLOCKS), replace=lambda x: x + delta)[0]
    assert torch.equal(forward(installed, 1), expected)  # skipped: out(0) + delta of step 0
    assert torch.equal(forward(installed, 2), forward(reference, 2))  # max_consecutive_skips forces
    forward(installed, 3)

    trace = block_cache_trace(installed)
    assert [entry["skipped"] for entry in trace] == [False, True, False, True]
    assert "change" not in trace[0] and "change" not in trace[2]  # forced: nothing compared
    assert trace[1]["change"] == pytest.approx(change_1, rel=1e-6)
    # Step 3 compares with the residual of step 2, the last compute step.
    assert trace[3]["change"] == pytest.approx(relative_change(r[3], r[2])[0], rel=1e-6)
    assert trace[1]["local_change"] == trace[1]["change"]  # one process: the shard is the whole
    assert block_cache_stats(installed)["blocks_skipped"] == 2 * (NUM_BLOCKS - 1)


def test_adaptive_below_every_change_is_bit_exact(
    installed: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    set_block_cache(installed, AdaptiveCacheConfig(threshold=1e-9, warmup_steps=0, final_steps=0))
    assert all(torch.equal(forward(installed, step), forward(reference, step)) for step in range(4))
    trace = block_cache_trace(installed)
    assert not any(entry["skipped"] for entry in trace)
    assert all(entry["change"] > 0 for entry in trace[1:])


def test_adaptive_branches_decide_apart_and_final_steps_compute(installed: WanTransformer3DModel) -> None:
    set_block_cache(installed, AdaptiveCacheConfig(threshold=10.0, final_steps=2), num_steps=6)
    for step in range(6):
        for branch in ("cond", "uncond"):
            forward(installed, step, branch)
    trace = block_cache_trace(installed)
    for branch in ("cond", "uncond"):
        skipped = [entry["skipped"] for entry in trace if entry["branch"] == branch]
        # warm-up 1; then skip, skip, compute (max 2 in a row); the final two compute.
        assert skipped == [False, True, True, False, False, False]


def test_a_new_latent_shape_computes_instead_of_broadcasting(installed: WanTransformer3DModel) -> None:
    set_block_cache(installed, AdaptiveCacheConfig(threshold=10.0, warmup_steps=0))
    forward(installed, 0)

    batch_of_two = {key: torch.cat([value, value]) for key, value in inputs(1, "cond").items()}
    with installed.cache_context("cond"):
        installed(**batch_of_two)
    assert [entry["skipped"] for entry in block_cache_trace(installed)] == [False, False]


def test_install_refuses_after_context_parallelism_and_twice() -> None:
    model = make_transformer()
    HookRegistry.check_if_exists_or_initialize(model.blocks[0]).register_hook(
        ModelHook(), _CP_INPUT_HOOK_PREFIX + "hidden_states"
    )
    with pytest.raises(ValueError, match="before enable_parallelism"):
        install_block_cache(model)
    model = make_transformer()
    install_block_cache(model)
    with pytest.raises(ValueError, match="already installed"):
        install_block_cache(model)
    remove_block_cache(model)
    with pytest.raises(ValueError, match="not installed"):
        set_block_cache(model, None)


def test_relative_change() -> None:
    previous = torch.tensor([1.0, -2.0, 3.0, 0.0])
    residual = torch.tensor([1.5, -2.0, 2.0, 0.5])
    assert relative_change(residual, previous) == (pytest.approx(2.0 / 6.0), pytest.approx(2.0 / 6.0))
    assert relative_change(residual, torch.zeros(4))[0] == math.inf
    half = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert relative_change(half, half) == (0.0, 0.0)
