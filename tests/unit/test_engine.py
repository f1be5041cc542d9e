"""The denoising loop we own, against diffusers' WanPipeline on the tiny model."""

import dataclasses
import time
from typing import Any

import numpy as np
import pytest
import torch

from service.core.errors import GenerationCancelled
from service.core.lifecycle import Stage
from tests.params import PARAMS
from worker.engine import JobHooks, WanEngine
from worker.errors import GenerationAborted


def test_our_loop_matches_the_diffusers_pipeline(engine, pipeline_frames: np.ndarray) -> None:
    ours = engine.generate(PARAMS).frames
    assert ours.shape == (17, 64, 64, 3)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, pipeline_frames)


def test_same_seed_same_video_other_seed_other_video(engine) -> None:
    first = engine.generate(PARAMS).frames
    again = engine.generate(PARAMS).frames
    other = engine.generate(dataclasses.replace(PARAMS, seed=99)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_without_guidance_the_unconditional_pass_is_skipped(engine) -> None:
    calls: list[int] = []
    handle = engine.pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        engine.generate(dataclasses.replace(PARAMS, guidance_scale=1.0))
    finally:
        handle.remove()
    assert len(calls) == PARAMS.num_inference_steps


def test_stages_and_every_step_are_reported_with_timings(engine) -> None:
    stages: list[Stage] = []
    steps: list[tuple[int, int]] = []
    result = engine.generate(
        PARAMS, JobHooks(on_stage=stages.append, on_step=lambda done, total: steps.append((done, total)))
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
            PARAMS, JobHooks(on_step=lambda done, _: steps.append(done), should_stop=lambda: len(steps) >= 2)
        )
    assert steps == [1, 2]


def test_the_vae_is_loaded_in_float32_not_rounded_through_bf16(tiny_model_dir) -> None:
    from diffusers import AutoencoderKLWan

    engine = WanEngine.load(tiny_model_dir, device="cpu", dtype="bfloat16")
    reference = AutoencoderKLWan.from_pretrained(str(tiny_model_dir), subfolder="vae", dtype=torch.float32)
    assert engine.pipe.transformer.dtype == torch.bfloat16
    loaded, expected = engine.pipe.vae.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32, name
        assert torch.equal(loaded[name], tensor), f"{name} was rounded"


class Recorder:
    """The job's callbacks, failing where a test asks."""

    def __init__(self, fail_at_step: int | None = None, fail_at_stage: Stage | None = None) -> None:
        self.steps: list[int] = []
        self.stages: list[Stage] = []
        self.fail_at_step, self.fail_at_stage = fail_at_step, fail_at_stage

    def on_step(self, done: int, _total: int) -> None:
        self.steps.append(done)
        if done == self.fail_at_step:
            raise ConnectionError("progress write failed")

    def on_stage(self, stage: Stage) -> None:
        self.stages.append(stage)
        if stage == self.fail_at_stage:
            raise ConnectionError("stage write failed")


def transformer_calls(engine) -> tuple[list[int], Any]:
    calls: list[int] = []
    return calls, engine.pipe.transformer.register_forward_hook(lambda *_: calls.append(1))


def test_a_failing_progress_callback_stops_the_job_at_the_next_step_boundary(engine) -> None:
    recorder = Recorder(fail_at_step=2)
    calls, handle = transformer_calls(engine)
    try:
        with pytest.raises(GenerationAborted, match="stopped before denoising step 3 of 4") as raised:
            engine.generate(PARAMS, JobHooks(on_stage=recorder.on_stage, on_step=recorder.on_step))
    finally:
        handle.remove()
    assert isinstance(raised.value.__cause__, ConnectionError), "the callback's error is the cause"
    assert recorder.steps == [1, 2]
    assert len(calls) == 2 * 2, "two steps of two passes, and no more"
    assert Stage.VAE_DECODE not in recorder.stages


def test_a_failing_callback_at_the_last_step_stops_the_job_before_decoding(engine) -> None:
    recorder = Recorder(fail_at_step=PARAMS.num_inference_steps)
    with pytest.raises(GenerationAborted, match="stopped before decoding"):
        engine.generate(PARAMS, JobHooks(on_stage=recorder.on_stage, on_step=recorder.on_step))
    assert recorder.stages == [Stage.TEXT_ENCODE, Stage.DENOISE]


def test_a_failing_stage_callback_stops_the_job_before_the_first_step(engine) -> None:
    recorder = Recorder(fail_at_stage=Stage.TEXT_ENCODE)
    with pytest.raises(GenerationAborted, match="before denoising step 1 of 4"):
        engine.generate(PARAMS, JobHooks(on_stage=recorder.on_stage, on_step=recorder.on_step))
    assert recorder.steps == []
    assert recorder.stages == [Stage.TEXT_ENCODE], "the next stage is not announced once the job is lost"


def test_a_failing_cancel_check_aborts_rather_than_cancels(engine) -> None:
    def should_stop() -> bool:
        raise ConnectionError("cancel check failed")

    with pytest.raises(GenerationAborted) as raised:
        engine.generate(PARAMS, JobHooks(should_stop=should_stop))
    assert raised.value.code == "generation_failed"
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_a_passed_deadline_aborts_with_job_timeout_at_a_step_boundary(engine) -> None:
    recorder = Recorder()
    with pytest.raises(GenerationAborted, match="time limit") as raised:
        engine.generate(PARAMS, JobHooks(on_step=recorder.on_step, deadline=time.monotonic()))
    assert raised.value.code == "job_timeout"
    assert recorder.steps == []
    assert engine.generate(PARAMS, JobHooks(deadline=time.monotonic() + 3600)).frames is not None
