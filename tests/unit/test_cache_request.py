"""The ``cache`` contract (service/core/cache.py): what is accepted, how it resolves and sizes to the model,
its JSON form and report; then the engine running what it resolved, and the video object showing it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from service.core.cache import (
    DIT_CACHE_PRESETS,
    NO_CACHE,
    AdaptiveCacheConfig,
    CacheSpec,
    DiTCacheConfig,
    cache_report,
    dit_cache_preset,
    resolve_cache,
)
from service.core.errors import GenerationCancelled, InvalidRequest
from service.core.lifecycle import VideoStatus
from service.core.model_profile import TINY_PROFILE
from service.core.schemas import GenerationParams, parse_create_request, resolve_params
from service.core.video_object import video_object
from tests.params import PARAMS
from worker.cache import block_cache_trace
from worker.engine import JobHooks

TINY_BLOCKS = 2
assert TINY_PROFILE.num_layers == TINY_BLOCKS
TINY_STEPS = TINY_PROFILE.default_steps
DIT = {"step_start": 0, "step_end": 3, "step_interval": 2, "block_start": 1, "block_end": 2}
ADAPTIVE_DEFAULTS = AdaptiveCacheConfig().to_json()


def resolve(cache: Any) -> dict[str, Any]:
    """The JSON form a request's ``cache`` resolves to at the API, for the tiny model (2 blocks, 4 steps)."""
    body = {"prompt": "a red fox"} if cache is None else {"prompt": "a red fox", "cache": cache}
    params = resolve_params(parse_create_request(body), TINY_PROFILE, max_prompt_chars=2000, max_steps=100)
    return params.cache.to_json()


def rejected(cache: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        resolve(cache)
    assert caught.value.param == "cache"
    assert "'cache'" in caught.value.message
    return caught.value


# -- the contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "resolved"),
    [
        (None, {"method": "none"}),
        ("none", {"method": "none"}),
        ({"method": "none"}, {"method": "none"}),
        ("fast", {"method": "dit", "preset": "fast", **dit_cache_preset("fast", TINY_STEPS, 2).to_json()}),
        (
            "balanced",
            {"method": "dit", "preset": "balanced", **dit_cache_preset("balanced", TINY_STEPS, 2).to_json()},
        ),
        ("adaptive", {"method": "adaptive", **ADAPTIVE_DEFAULTS}),
        (DIT, {"method": "dit", **DIT}),
        ({"method": "dit", **DIT}, {"method": "dit", **DIT}),
        (json.dumps(DIT), {"method": "dit", **DIT}),  # a multipart form field
        (
            {"method": "adaptive", "threshold": 0.2},
            {"method": "adaptive", **ADAPTIVE_DEFAULTS, "threshold": 0.2},
        ),
        (
            ' {"method": "adaptive", "threshold": 1, "max_consecutive_skips": 4} ',
            {"method": "adaptive", **ADAPTIVE_DEFAULTS, "threshold": 1.0, "max_consecutive_skips": 4},
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
        ({**DIT, "block_end": 3}, "block_end (3) must be <= the model's 2 transformer blocks"),
        ({**DIT, "block_start": 5, "block_end": 99}, "block_end (99) must be <="),
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"method": "none", "threshold": 1}, "unknown field 'threshold'"),
        ({"method": "adaptive", "step_start": 1}, "unknown field 'step_start'"),
        ({"method": "adaptive", "threshold": 0}, "threshold must be a number > 0"),
        ({"method": "adaptive", "threshold": -1}, "threshold must be a number > 0"),
        ({"method": "adaptive", "threshold": 11}, "threshold must be a number > 0 and <= 10"),
        ({"method": "adaptive", "threshold": "0.1"}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": True}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": float("nan")}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": float("inf")}, "threshold must be a number"),
        ({"method": "adaptive", "threshold": 10**400}, "threshold must be a number"),
        ({"method": "adaptive", "warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"method": "adaptive", "final_steps": 1.5}, "final_steps must be an integer"),
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


def test_block_ranges_are_checked_against_the_models_layer_count() -> None:
    wan_1_3b = {"num_steps": 50, "num_layers": 30}
    fits = resolve_cache({**DIT, "block_start": 10, "block_end": 30}, **wan_1_3b)
    assert fits.config == DiTCacheConfig(**{**DIT, "block_start": 10, "block_end": 30})
    with pytest.raises(InvalidRequest, match=r"block_end \(99\) must be <= the model's 30") as caught:
        resolve_cache({**DIT, "block_end": 99}, **wan_1_3b)
    assert caught.value.param == "cache"
    # The adaptive cache skips blocks [1, N): a one-block model has none to skip.
    assert resolve_cache("adaptive", num_steps=4, num_layers=2).config == AdaptiveCacheConfig()
    with pytest.raises(InvalidRequest, match="at least 2 transformer blocks"):
        resolve_cache("adaptive", num_steps=4, num_layers=1)


def test_without_a_layer_count_ranges_pass_and_presets_are_sized_later() -> None:
    """A profile registered by an older worker has no ``num_layers``: the API accepts, the worker sizes."""
    explicit = resolve_cache({**DIT, "block_end": 99}, num_steps=50, num_layers=None)
    assert explicit.config == DiTCacheConfig(**{**DIT, "block_end": 99})
    unsized = resolve_cache("fast", num_steps=50, num_layers=None)
    assert unsized == CacheSpec(method="dit", preset="fast", config=None)
    assert unsized.sized(50, 30) == CacheSpec(method="dit", preset="fast", config=DIT_CACHE_PRESETS["fast"])
    assert unsized.sized(50, 30) == resolve_cache("fast", num_steps=50, num_layers=30)
    sized = resolve_cache("fast", num_steps=50, num_layers=30)
    assert sized.sized(8, 2) is sized  # sized once, at the API


def test_presets_scale_the_reference_schedule() -> None:
    for name, reference in DIT_CACHE_PRESETS.items():
        assert dit_cache_preset(name, 50, 30) == reference  # the table is stated at 50 steps, 30 layers
    assert dit_cache_preset("balanced", 50, 40) == DiTCacheConfig(20, 47, 2, 13, 40)
    assert dit_cache_preset("fast", 6, 4) == DiTCacheConfig(2, 5, 3, 1, 4)
    for name in DIT_CACHE_PRESETS:
        for steps in range(1, 61):
            for layers in (1, 2, 30, 40):
                preset = dit_cache_preset(name, steps, layers)
                assert preset.block_end == layers
                assert 0 <= preset.block_start < preset.block_end
                assert 0 <= preset.step_start <= preset.step_end
                assert preset.is_compute_step(steps - 1)
    with pytest.raises(ValueError, match="unknown DiTCache preset"):
        dit_cache_preset("turbo", 50, 30)


def test_forces_compute() -> None:
    config = AdaptiveCacheConfig(threshold=0.1, warmup_steps=2, final_steps=1, max_consecutive_skips=2)
    assert [config.forces_compute(step, 6, 0) for step in range(6)] == [True, True, False, False, False, True]
    assert config.forces_compute(3, 6, 2) and not config.forces_compute(3, 6, 1)
    assert not config.forces_compute(5, None, 0)  # the step count is unknown: no final steps


@pytest.mark.parametrize(
    "spec",
    [
        NO_CACHE,
        CacheSpec(method="dit", preset="fast"),
        CacheSpec(method="dit", preset="balanced", config=dit_cache_preset("balanced", 20, 6)),
        CacheSpec(method="dit", config=DiTCacheConfig(**DIT)),
        CacheSpec(method="adaptive", config=AdaptiveCacheConfig(threshold=0.2, final_steps=0)),
    ],
)
def test_the_json_form_round_trips(spec: CacheSpec) -> None:
    assert CacheSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_records_of_earlier_versions_read_as_the_same_spec() -> None:
    assert CacheSpec.from_json({"method": "dit", "preset": "fast"}) == CacheSpec(method="dit", preset="fast")
    assert CacheSpec.from_json({"method": "adaptive", **ADAPTIVE_DEFAULTS}) == resolve_cache("adaptive")
    assert CacheSpec.from_json({"method": "dit", **DIT}) == resolve_cache(DIT)


def test_params_carry_the_cache_through_json_and_old_records_default_to_none() -> None:
    params = dataclasses.replace(PARAMS, cache=resolve_cache(DIT))
    data = json.loads(json.dumps(params.to_json()))
    assert data["cache"] == {"method": "dit", **DIT}
    assert GenerationParams.from_json(data) == params
    assert params != PARAMS
    hash(params)
    old_record = {key: value for key, value in PARAMS.to_json().items() if key != "cache"}
    assert GenerationParams.from_json(old_record).cache == NO_CACHE


def test_the_report_has_one_shape_for_every_method() -> None:
    specs = [NO_CACHE, resolve_cache("fast"), resolve_cache("fast", num_steps=8, num_layers=2),
             resolve_cache("adaptive"), resolve_cache(DIT), resolve_cache("easycache")]  # fmt: skip
    totals = {"blocks_computed": 12, "blocks_skipped": 4, "passes": 8, "passes_skipped": 2}
    counts = {**totals, "cond_steps_skipped": 1, "uncond_steps_skipped": 1}
    keys = {"method", "preset", "config", "steps_skipped", *totals}
    for spec in specs:
        requested, ran = cache_report(spec), cache_report(spec, counts)
        assert set(requested) == set(ran) == keys
        assert all(requested[key] is None for key in (*totals, "steps_skipped"))
        assert {key: ran[key] for key in totals} == totals
        assert ran["steps_skipped"] == {"cond": 1, "uncond": 1}
        assert cache_report(spec, totals)["steps_skipped"] is None, "an older worker's report"
        assert (ran["method"], ran["preset"]) == (spec.method, spec.preset)
        assert ran["config"] == (None if spec.config is None else spec.config.to_json())


# -- the engine -------------------------------------------------------------------------------------


def with_cache(cache: Any, **changes: Any) -> GenerationParams:
    """PARAMS with ``cache`` resolved as the API does for the tiny model."""
    steps = changes.get("num_inference_steps", PARAMS.num_inference_steps)
    spec = resolve_cache(cache, num_steps=steps, num_layers=TINY_BLOCKS)
    return dataclasses.replace(PARAMS, cache=spec, **changes)


def test_cache_none_is_bit_exact_with_no_cache_hooks(engine, pipeline_frames: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    result = engine.generate(PARAMS)
    assert np.array_equal(result.frames, pipeline_frames)
    passes = 2 * PARAMS.num_inference_steps
    assert result.cache == {
        "method": "none",
        "preset": None,
        "config": None,
        "blocks_computed": passes * TINY_BLOCKS,
        "blocks_skipped": 0,
        "passes": passes,
        "passes_skipped": 0,
        "steps_skipped": {"cond": 0, "uncond": 0},
    }


def test_each_request_gets_its_own_schedule(engine, pipeline_frames: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    fast = engine.generate(with_cache("fast"))
    preset = dit_cache_preset("fast", PARAMS.num_inference_steps, TINY_BLOCKS)
    skips = sum(not preset.is_compute_step(step) for step in range(PARAMS.num_inference_steps))
    assert skips > 0
    assert fast.cache is not None
    assert fast.cache["config"] == preset.to_json()
    assert fast.cache["preset"] == "fast"
    assert fast.cache["passes_skipped"] == 2 * skips  # both branches
    assert fast.cache["blocks_skipped"] == 2 * skips * preset.num_cached_blocks
    assert not np.array_equal(fast.frames, pipeline_frames)
    assert np.abs(fast.frames - pipeline_frames).max() < 0.05

    explicit = engine.generate(with_cache({"method": "dit", **DIT}))
    assert explicit.cache is not None and explicit.cache["config"] == DIT
    assert not np.array_equal(explicit.frames, fast.frames)
    # Back to uncached, then the same cached request again: state does not leak between requests.
    assert np.array_equal(engine.generate(PARAMS).frames, pipeline_frames)
    again = engine.generate(with_cache("fast"))
    assert np.array_equal(again.frames, fast.frames)
    # A preset the API could not size (no layer count in its profile) is sized by the worker, the same way.
    unsized = engine.generate(dataclasses.replace(PARAMS, cache=resolve_cache("fast")))
    assert np.array_equal(unsized.frames, fast.frames)
    assert unsized.cache == fast.cache


def test_adaptive_request_reports_its_decisions(engine) -> None:  # type: ignore[no-untyped-def]
    result = engine.generate(
        with_cache({"method": "adaptive", "threshold": 0.06, "final_steps": 0}, num_inference_steps=8)
    )
    trace = block_cache_trace(engine.pipe.transformer)
    assert result.cache is not None
    assert result.cache["config"] == {**ADAPTIVE_DEFAULTS, "threshold": 0.06, "final_steps": 0}
    assert result.cache["passes"] == len(trace) == 16
    assert result.cache["passes_skipped"] == sum(entry["skipped"] for entry in trace) > 0
    assert result.cache["blocks_skipped"] == result.cache["passes_skipped"] * (TINY_BLOCKS - 1)
    for entry in trace:
        if "change" in entry:  # compared, not forced
            assert entry["skipped"] == (entry["change"] < 0.06)


def test_a_cancelled_cached_request_leaves_no_state(engine) -> None:  # type: ignore[no-untyped-def]
    params = with_cache({"method": "dit", **DIT})
    expected = engine.generate(params).frames
    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        engine.generate(
            params, JobHooks(on_step=lambda done, _: steps.append(done), should_stop=lambda: len(steps) > 1)
        )
    assert np.array_equal(engine.generate(params).frames, expected)


# -- the video object -------------------------------------------------------------------------------


def record(requested: CacheSpec, **fields: Any) -> dict[str, Any]:
    params = dataclasses.replace(PARAMS, cache=requested)
    return {"id": "video_1", "model": "m", "created_at": 1.0, "params": params.to_json(), **fields}


def test_video_object_shows_the_requested_cache_until_the_worker_reports() -> None:
    sized = resolve_cache("balanced", num_steps=PARAMS.num_inference_steps, num_layers=TINY_BLOCKS)
    queued = video_object(record(sized), VideoStatus.QUEUED, None, 0)
    assert queued["cache"] == cache_report(sized)
    assert sized.config is not None and queued["cache"]["config"] == sized.config.to_json()
    assert queued["cache"]["blocks_skipped"] is None
    # Sized by the worker: nothing to show until it reports.
    unsized = video_object(record(resolve_cache("balanced")), VideoStatus.QUEUED, None, 0)
    assert (unsized["cache"]["preset"], unsized["cache"]["config"]) == ("balanced", None)

    ran = cache_report(sized, {"blocks_computed": 12, "blocks_skipped": 4, "passes": 8, "passes_skipped": 2})
    completed = video_object(record(sized, cache=ran, completed_at=2.0), VideoStatus.COMPLETED, None, None)
    assert completed["cache"] == ran
    adaptive = video_object(record(resolve_cache("adaptive")), VideoStatus.IN_PROGRESS, None, None)
    assert adaptive["cache"]["config"] == ADAPTIVE_DEFAULTS
