"""DiTCache on a real (tiny) diffusers WanTransformer3DModel, checked against an unhooked twin."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from service.core.cache import DiTCacheConfig, dit_cache_preset
from tests.unit.tiny_transformer import (
    BRANCHES,
    NUM_BLOCKS,
    forward,
    forward_with_range,
    inputs,
    make_transformer,
)
from worker.cache import apply_dit_cache, dit_cache_stats, remove_dit_cache, reset_dit_cache


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


@pytest.fixture
def cached() -> WanTransformer3DModel:
    return make_transformer()


@pytest.fixture(scope="module")
def reference() -> WanTransformer3DModel:
    return make_transformer()


def config(start: int, end: int, interval: int, blocks: tuple[int, int]) -> DiTCacheConfig:
    return DiTCacheConfig(
        step_start=start, step_end=end, step_interval=interval, block_start=blocks[0], block_end=blocks[1]
    )


def test_interval_one_is_bit_exact(cached: WanTransformer3DModel, reference: WanTransformer3DModel) -> None:
    apply_dit_cache(cached, config(0, 10, 1, (1, 3)))
    for step in range(4):
        assert torch.equal(forward(cached, step), forward(reference, step))
    assert dit_cache_stats(cached) == {"blocks_computed": 4 * NUM_BLOCKS, "blocks_skipped": 0}


def test_skip_step_adds_delta_of_last_compute_step(
    cached: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    block_range = (1, 3)
    apply_dit_cache(cached, config(0, 10, 3, block_range))
    delta = torch.empty(0)  # set on step 0, a compute step
    for step in range(5):  # compute, skip, skip, compute, skip
        if step % 3 == 0:
            expected, block_in, block_out = forward_with_range(reference, step, block_range)
            delta = block_out - block_in
        else:
            add_delta = functools.partial(torch.add, other=delta)
            expected, _, _ = forward_with_range(reference, step, block_range, replace=add_delta)
        assert torch.equal(forward(cached, step), expected), f"step {step}"


def test_schedule_honours_step_end_and_counts_blocks(
    cached: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    schedule = config(1, 4, 2, (1, 3))
    apply_dit_cache(cached, schedule)
    # Steps 4 and 6 would skip if step_end were ignored, as MindIE does.
    computes = [True, True, False, True, True, True, True]
    assert [schedule.is_compute_step(step) for step in range(7)] == computes
    # A step computes exactly when its output matches the uncached model.
    observed = [torch.equal(forward(cached, step), forward(reference, step)) for step in range(7)]
    assert observed == computes
    assert dit_cache_stats(cached) == {"blocks_computed": 7 * NUM_BLOCKS - 2, "blocks_skipped": 2}


def test_one_block_range_caches_the_delta(
    cached: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    block_range = (2, 3)
    apply_dit_cache(cached, config(0, 10, 2, block_range))
    forward(cached, 0)
    _, block_in, block_out = forward_with_range(reference, 0, block_range)

    skipped = forward(cached, 1)
    expected = forward_with_range(reference, 1, block_range, replace=lambda x: x + (block_out - block_in))[0]
    assert torch.equal(skipped, expected)
    # MindIE's one-block bug: the block's cached input stands in for its output.
    stale_input = forward_with_range(reference, 1, block_range, replace=lambda x: block_in)[0]
    assert not torch.allclose(skipped, stale_input)
    assert dit_cache_stats(cached) == {"blocks_computed": 2 * NUM_BLOCKS - 1, "blocks_skipped": 1}


def test_branches_keep_separate_schedules(reference: WanTransformer3DModel) -> None:
    interleaved, sequential = make_transformer(), make_transformer()
    for model in (interleaved, sequential):
        apply_dit_cache(model, config(0, 10, 2, (1, 4)))
    steps = range(5)
    outputs_interleaved: dict[str, list[torch.Tensor]] = {branch: [] for branch in BRANCHES}
    for step in steps:
        for branch in BRANCHES:
            outputs_interleaved[branch].append(forward(interleaved, step, branch))
    outputs_sequential = {b: [forward(sequential, step, b) for step in steps] for b in BRANCHES}

    for branch in BRANCHES:
        for step in steps:
            assert torch.equal(outputs_interleaved[branch][step], outputs_sequential[branch][step])
            # Each branch counts its own forwards: steps 0, 2, 4 compute in both.
            uncached = forward(reference, step, branch)
            assert torch.equal(outputs_interleaved[branch][step], uncached) == (step % 2 == 0)
    expected = {"blocks_computed": 10 * NUM_BLOCKS - 4 * 3, "blocks_skipped": 4 * 3}
    assert dit_cache_stats(interleaved) == dit_cache_stats(sequential) == expected


def test_reset_restarts_the_schedule(cached: WanTransformer3DModel) -> None:
    apply_dit_cache(cached, config(0, 10, 2, (1, 3)))
    first = [forward(cached, step) for step in range(3)]  # compute, skip, compute
    # Without a reset the counter carries on: the next forward is step 3, a skip.
    assert not torch.equal(forward(cached, 0), first[0])

    reset_dit_cache(cached)
    assert all(torch.equal(forward(cached, step), first[step]) for step in range(3))
    cached._reset_stateful_cache()
    assert all(torch.equal(forward(cached, step), first[step]) for step in range(3))
    # Stats survive resets: 10 forwards, 4 of them skips of 2 blocks.
    assert dit_cache_stats(cached) == {"blocks_computed": 10 * NUM_BLOCKS - 8, "blocks_skipped": 8}


def test_skip_step_with_new_latent_shape_computes(
    cached: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    apply_dit_cache(cached, config(0, 10, 2, (1, 3)))
    forward(cached, 0)
    # Step 1 is a skip step, but a batch-1 delta would silently broadcast over batch 2.
    batch_of_two = {key: torch.cat([value, value]) for key, value in inputs(1, "cond").items()}
    outputs = []
    for model in (cached, reference):
        with model.cache_context("cond"):
            outputs.append(model(**batch_of_two, return_dict=False)[0])
    assert torch.equal(outputs[0], outputs[1])
    assert dit_cache_stats(cached) == {"blocks_computed": 2 * NUM_BLOCKS, "blocks_skipped": 0}


def test_remove_restores_uncached_behaviour(
    cached: WanTransformer3DModel, reference: WanTransformer3DModel
) -> None:
    apply_dit_cache(cached, config(0, 10, 2, (0, NUM_BLOCKS)))
    forward(cached, 0)
    forward(cached, 1)
    remove_dit_cache(cached)
    for step in range(3):
        assert torch.equal(forward(cached, step), forward(reference, step))
    with pytest.raises(ValueError, match="not applied"):
        dit_cache_stats(cached)

    apply_dit_cache(cached, config(0, 10, 2, (0, NUM_BLOCKS)))  # re-applies cleanly, fresh state
    assert torch.equal(forward(cached, 0), forward(reference, 0))
    assert not torch.equal(forward(cached, 1), forward(reference, 1))
    assert dit_cache_stats(cached) == {"blocks_computed": 2 * NUM_BLOCKS - 4, "blocks_skipped": 4}


def test_apply_refuses_a_second_apply(cached: WanTransformer3DModel) -> None:
    apply_dit_cache(cached, config(0, 4, 2, (1, NUM_BLOCKS)))
    with pytest.raises(ValueError, match="already applied"):
        apply_dit_cache(cached, config(0, 4, 2, (1, NUM_BLOCKS)))


def test_wan_pipeline_with_cfg_skips_blocks_and_resets_between_calls() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=384,
            d_model=32,
            d_ff=64,
            d_kv=16,
            num_heads=2,
            num_layers=2,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
        )
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    transformer = make_transformer()
    pipe = WanPipeline(
        tokenizer=ByT5Tokenizer(),  # type: ignore[arg-type]  # diffusers annotates the AutoTokenizer factory
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)

    def generate() -> torch.Tensor:
        # Latents are what the cache affects; decoding them would only add VAE time.
        latents = pipe(
            prompt="a cat surfing",
            negative_prompt="blurry",
            height=32,
            width=32,
            num_frames=17,
            num_inference_steps=6,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            max_sequence_length=16,
        ).frames
        assert isinstance(latents, torch.Tensor)
        return latents

    # fast at 6 steps / 4 blocks: steps 3 and 4 skip blocks 1-3, in each of the two branches.
    preset = dit_cache_preset("fast", 6, NUM_BLOCKS)
    assert preset == config(2, 5, 3, (1, NUM_BLOCKS))
    apply_dit_cache(transformer, preset)
    first = generate()
    per_call = {"blocks_computed": 2 * 6 * NUM_BLOCKS - 12, "blocks_skipped": 12}
    assert dit_cache_stats(transformer) == per_call
    # WanPipeline resets stateful hooks at the end of __call__ (maybe_free_model_hooks).
    assert torch.equal(generate(), first)
    assert dit_cache_stats(transformer) == {key: 2 * value for key, value in per_call.items()}

    remove_dit_cache(transformer)
    assert not torch.equal(generate(), first)
