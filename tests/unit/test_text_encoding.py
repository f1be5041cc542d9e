"""The engine's text encoding: the negative prompt's embedding is kept per worker, bounded, and equal to
a fresh encode; offloading the text encoder is a no-op on a CPU device."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.params import PARAMS
from worker.engine import WanEngine
from worker.text_encoding import CACHED_TEXTS, PromptEncoder


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> WanEngine:
    return WanEngine.load(tiny_model_dir)


@pytest.fixture
def encoder_calls(engine: WanEngine) -> Iterator[list[int]]:
    """How many times the real UMT5 ran (one entry per forward call)."""
    calls: list[int] = []
    handle = engine.pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def fresh_encoder(engine: WanEngine, **options: object) -> PromptEncoder:
    return PromptEncoder(
        engine.pipe, engine.device, engine.dtype, engine.profile.max_sequence_length, **options
    )  # type: ignore[arg-type]


def test_a_second_request_with_the_same_negative_prompt_does_not_encode_it(
    engine: WanEngine, encoder_calls: list[int]
) -> None:
    engine.generate(dataclasses.replace(PARAMS, num_inference_steps=1))
    first = len(encoder_calls)
    engine.generate(dataclasses.replace(PARAMS, prompt="a green square", num_inference_steps=1))
    assert first == 2 and len(encoder_calls) == first + 1  # only the new prompt
    cached = engine._encode(PARAMS.negative_prompt)
    assert len(encoder_calls) == first + 1
    uncached = fresh_encoder(engine, cache_size=0).encode(PARAMS.negative_prompt)
    assert torch.equal(cached, uncached)
    assert cached.shape == (1, engine.profile.max_sequence_length, engine.pipe.text_encoder.config.d_model)


def test_the_cache_is_bounded_and_keeps_what_is_used(engine: WanEngine, encoder_calls: list[int]) -> None:
    prompts = fresh_encoder(engine)
    for index in range(3 * CACHED_TEXTS):
        prompts.encode("blurry")  # the shared negative prompt, used by every request
        prompts.encode(f"prompt {index}")
    assert len(prompts._cache) == CACHED_TEXTS
    assert len(encoder_calls) == 1 + 3 * CACHED_TEXTS  # "blurry" once, every prompt once


def test_offload_is_a_no_op_on_a_cpu_device(engine: WanEngine) -> None:
    prompts = fresh_encoder(engine, offload=True, cache_size=0)
    assert not prompts.offload
    assert engine.pipe.text_encoder.device.type == "cpu"
    assert torch.equal(prompts.encode("blurry"), fresh_encoder(engine, cache_size=0).encode("blurry"))
