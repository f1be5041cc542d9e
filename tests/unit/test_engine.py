"""The denoising loop we own, against diffusers' WanPipeline on the tiny model."""

import numpy as np
import pytest
import torch

from service.errors import GenerationCancelled
from service.jobs import Stage
from service.schemas import GenerationParams
from tests.distributed.params import PARAMS


def test_our_loop_matches_the_diffusers_pipeline(engine) -> None:
    ours = engine.generate(PARAMS).frames
    reference = engine.pipe(
        prompt=PARAMS.prompt,
        negative_prompt=PARAMS.negative_prompt,
        height=PARAMS.height,
        width=PARAMS.width,
        num_frames=PARAMS.num_frames,
        num_inference_steps=PARAMS.num_inference_steps,
        guidance_scale=PARAMS.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(PARAMS.seed),
        output_type="np",
    ).frames[0]
    assert ours.shape == (17, 64, 64, 3)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, reference)


def test_same_seed_same_video_other_seed_other_video(engine) -> None:
    first = engine.generate(PARAMS).frames
    again = engine.generate(PARAMS).frames
    other = engine.generate(GenerationParams(**{**PARAMS.to_json(), "seed": 99})).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_without_guidance_the_unconditional_pass_is_skipped(engine) -> None:
    calls: list[int] = []
    handle = engine.pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        engine.generate(GenerationParams(**{**PARAMS.to_json(), "guidance_scale": 1.0}))
    finally:
        handle.remove()
    assert len(calls) == PARAMS.num_inference_steps


def test_stages_and_every_step_are_reported_with_timings(engine) -> None:
    stages: list[Stage] = []
    steps: list[tuple[int, int]] = []
    result = engine.generate(
        PARAMS, on_stage=stages.append, on_step=lambda done, total: steps.append((done, total))
    )
    assert stages == [Stage.TEXT_ENCODE, Stage.DENOISE, Stage.VAE_DECODE]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(result.timings) == {"text_encode_s", "denoise_s", "vae_decode_s"}
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 0


def test_a_cancel_stops_at_the_next_step_boundary(engine) -> None:
    steps: list[int] = []
    with pytest.raises(GenerationCancelled, match="step 3 of 4"):
        engine.generate(
            PARAMS, on_step=lambda done, _: steps.append(done), should_stop=lambda: len(steps) >= 2
        )
    assert steps == [1, 2]
