"""The per-request ``cache`` field: validation at the edge, resolution, the engine, the video object."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch

from service.core.errors import GenerationCancelled, InvalidRequest
from service.core.lifecycle import VideoStatus
from service.core.model_profile import TINY_PROFILE
from service.core.schemas import (
    ADAPTIVE_CACHE_DEFAULTS,
    DIT_CACHE_PRESETS,
    GenerationParams,
    parse_create_request,
    resolve_params,
)
from service.core.video_object import video_object
from tests.distributed.params import PARAMS
from worker.cache import (
    DITCACHE_PRESETS,
    AdaptiveCacheConfig,
    block_cache_trace,
    dit_cache_preset,
    install_block_cache,
    remove_block_cache,
)

TINY_BLOCKS = 2
DIT = {"step_start": 0, "step_end": 3, "step_interval": 2, "block_start": 1, "block_end": 2}


def resolve(cache: Any) -> dict[str, Any]:
    body = {"prompt": "a red fox"} if cache is None else {"prompt": "a red fox", "cache": cache}
    params = resolve_params(parse_create_request(body), TINY_PROFILE, max_prompt_chars=2000, max_steps=100)
    return params.cache


def rejected(cache: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        resolve(cache)
    assert caught.value.param == "cache"
    assert "'cache'" in caught.value.message
    return caught.value


# -- the edge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "resolved"),
    [
        (None, {"method": "none"}),
        ("none", {"method": "none"}),
        ({"method": "none"}, {"method": "none"}),
        ("fast", {"method": "dit", "preset": "fast"}),
        ("balanced", {"method": "dit", "preset": "balanced"}),
        ("adaptive", {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS}),
        (DIT, {"method": "dit", **DIT}),
        ({"method": "dit", **DIT}, {"method": "dit", **DIT}),
        (json.dumps(DIT), {"method": "dit", **DIT}),  # a multipart form field
        (
            {"method": "adaptive", "threshold": 0.2},
            {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS, "threshold": 0.2},
        ),
        (
            ' {"method": "adaptive", "threshold": 1, "max_consecutive_skips": 4} ',
            {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS, "threshold": 1.0, "max_consecutive_skips": 4},
        ),
    ],
)
def test_cache_resolves(cache: Any, resolved: dict[str, Any]) -> None:
    assert resolve(cache) == resolved


@pytest.mark.parametrize(
    ("cache", "words"),
    [
        ("turbo", "unknown cache 'turbo'"),
        ("Fast", "unknown cache"),
        ("", "unknown cache"),
        (5, "must be one of"),
        (["fast"], "must be one of"),
        (True, "must be one of"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "unknown cache"),
        ({"step_start": 1}, "missing step_end"),
        ({**DIT, "blocks": 3}, "unknown field 'blocks'"),
        ({**DIT, "step_start": True}, "step_start must be an integer"),
        ({**DIT, "step_start": 1.5}, "step_start must be an integer"),
        ({**DIT, "step_start": "1"}, "step_start must be an integer"),
        ({**DIT, "step_end": 10**9}, "step_end must be an integer (at most"),
        ({**DIT, "step_start": -1}, "step_start must be >= 0"),
        ({**DIT, "step_start": 4, "step_end": 3}, "step_end must be >= step_start"),
        ({**DIT, "step_interval": 0}, "step_interval must be >= 1"),
        ({**DIT, "block_start": -1}, "block_start must be >= 0"),
        ({**DIT, "block_start": 2, "block_end": 2}, "block_end must be > block_start"),
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"method": "none", "threshold": 1}, "unknown field 'threshold'"),
        ({"method": "adaptive", "step_start": 1}, "unknown field 'step_start'"),
        ({"method": "adaptive", "threshold": 0}, "threshold must be a number > 0"),
        ({"method": "adaptive", "threshold": -1}, "threshold must be a number > 0"),
        ({"method": "adaptive", "threshold": 11}, "threshold must be a number > 0 and <= 10"),
        ({"method": "adaptive", "threshold": "0.1"}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": float("nan")}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": float("inf")}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": 10**400}, "threshold must be a number"),
        ({"method": "adaptive", "warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"method": "adaptive", "max_consecutive_skips": 0}, "max_consecutive_skips must be >= 1"),
    ],
)
def test_bad_cache_is_a_400_naming_cache(cache: Any, words: str) -> None:
    error = rejected(cache)
    assert words in error.message, error.message


def test_unknown_preset_lists_the_choices() -> None:
    error = rejected("turbo")
    assert error.code == "unknown_cache"
    for name in ("'none'", "'balanced'", "'fast'", "'adaptive'"):
        assert name in error.message


def test_the_api_knows_the_workers_presets_and_defaults() -> None:
    assert sorted(DIT_CACHE_PRESETS) == sorted(DITCACHE_PRESETS)
    assert AdaptiveCacheConfig(**ADAPTIVE_CACHE_DEFAULTS).to_json() == ADAPTIVE_CACHE_DEFAULTS
    assert AdaptiveCacheConfig().to_json() == ADAPTIVE_CACHE_DEFAULTS


def test_params_carry_the_cache_through_json_and_old_records_default_to_none() -> None:
    params = dataclasses.replace(PARAMS, cache={"method": "dit", **DIT})
    data = json.loads(json.dumps(params.to_json()))
    assert GenerationParams.from_json(data) == params
    assert GenerationParams(**params.to_json()) == params
    assert params != PARAMS
    hash(params)  # still hashable: the cache dict is left out of the hash
    old_record = {key: value for key, value in PARAMS.to_json().items() if key != "cache"}
    assert GenerationParams.from_json(old_record).cache == {"method": "none"}


# -- the engine -------------------------------------------------------------------------------------


def with_cache(cache: dict[str, Any], **changes: Any) -> GenerationParams:
    return dataclasses.replace(PARAMS, cache=cache, **changes)


@pytest.fixture(scope="module")
def uncached(engine) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The frames of the pipeline with no cache hooks at all (our loop matches it: test_engine.py)."""
    transformer = engine.pipe.transformer
    remove_block_cache(transformer)
    try:
        frames: np.ndarray = engine.pipe(
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
    finally:
        install_block_cache(transformer)
    return frames


def test_cache_none_is_bit_exact_with_no_cache_hooks(engine, uncached: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    result = engine.generate(PARAMS)
    assert np.array_equal(result.frames, uncached)
    passes = 2 * PARAMS.num_inference_steps
    assert result.cache == {
        "method": "none",
        "preset": None,
        "config": None,
        "blocks_computed": passes * TINY_BLOCKS,
        "blocks_skipped": 0,
        "passes": passes,
        "passes_skipped": 0,
    }


def test_each_request_gets_its_own_schedule(engine, uncached: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    fast = engine.generate(with_cache({"method": "dit", "preset": "fast"}))
    preset = dit_cache_preset("fast", PARAMS.num_inference_steps, TINY_BLOCKS)
    skips = sum(not preset.is_compute_step(step) for step in range(PARAMS.num_inference_steps))
    assert skips > 0
    assert fast.cache is not None
    assert fast.cache["config"] == dataclasses.asdict(preset)
    assert fast.cache["preset"] == "fast"
    assert fast.cache["passes_skipped"] == 2 * skips  # both branches
    assert fast.cache["blocks_skipped"] == 2 * skips * preset.num_cached_blocks
    assert not np.array_equal(fast.frames, uncached)
    assert np.abs(fast.frames - uncached).max() < 0.05

    explicit = engine.generate(with_cache({"method": "dit", **DIT}))
    assert explicit.cache is not None and explicit.cache["config"] == DIT
    assert not np.array_equal(explicit.frames, fast.frames)
    # Back to uncached, then the same cached request again: state does not leak between requests.
    assert np.array_equal(engine.generate(PARAMS).frames, uncached)
    again = engine.generate(with_cache({"method": "dit", "preset": "fast"}))
    assert np.array_equal(again.frames, fast.frames)


def test_adaptive_request_reports_its_decisions(engine) -> None:  # type: ignore[no-untyped-def]
    config = {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS, "threshold": 0.06, "final_steps": 0}
    result = engine.generate(with_cache(config, num_inference_steps=8))
    trace = block_cache_trace(engine.pipe.transformer)
    assert result.cache is not None
    assert result.cache["config"] == {key: value for key, value in config.items() if key != "method"}
    assert result.cache["passes"] == len(trace) == 16
    assert result.cache["passes_skipped"] == sum(entry["skipped"] for entry in trace) > 0
    assert result.cache["blocks_skipped"] == result.cache["passes_skipped"] * (TINY_BLOCKS - 1)
    for entry in trace:
        if "change" in entry:  # compared, not forced
            assert entry["skipped"] == (entry["change"] < 0.06)


def test_block_end_beyond_the_model_fails_the_request_naming_cache(engine, uncached: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match="block_end") as caught:
        engine.generate(with_cache({"method": "dit", **DIT, "block_end": 3}))
    assert caught.value.param == "cache"
    assert "2" in caught.value.message
    assert np.array_equal(engine.generate(PARAMS).frames, uncached)


def test_a_cancelled_cached_request_leaves_no_state(engine) -> None:  # type: ignore[no-untyped-def]
    params = with_cache({"method": "dit", **DIT})
    expected = engine.generate(params).frames
    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        engine.generate(
            params, on_step=lambda done, _: steps.append(done), should_stop=lambda: len(steps) > 1
        )
    assert np.array_equal(engine.generate(params).frames, expected)


# -- the video object -------------------------------------------------------------------------------


def record(**fields: Any) -> dict[str, Any]:
    params = with_cache({"method": "dit", "preset": "balanced"})
    return {"id": "video_1", "model": "m", "created_at": 1.0, "params": params.to_json(), **fields}


def test_video_object_shows_the_requested_cache_until_the_worker_reports() -> None:
    queued = video_object(record(), VideoStatus.QUEUED, None, 0)
    assert queued["cache"] == {
        "method": "dit",
        "preset": "balanced",
        "config": None,
        "blocks_computed": None,
        "blocks_skipped": None,
        "passes": None,
        "passes_skipped": None,
    }
    ran = {"method": "dit", "preset": "balanced", "config": DIT, "blocks_computed": 12, "blocks_skipped": 4}
    completed = video_object(record(cache=ran, completed_at=2.0), VideoStatus.COMPLETED, None, None)
    assert completed["cache"] == ran
    adaptive = {"method": "adaptive", **ADAPTIVE_CACHE_DEFAULTS}
    old = video_object(
        {**record(), "params": with_cache(adaptive).to_json()}, VideoStatus.IN_PROGRESS, None, None
    )
    assert old["cache"]["config"] == ADAPTIVE_CACHE_DEFAULTS
