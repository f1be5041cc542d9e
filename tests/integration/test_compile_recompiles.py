"""``WANSERVE_COMPILE`` on the tiny model (CPU): compiled frames equal the eager ones, and requests with
different caches and step counts after the warm-up compile nothing new.

New compilations are counted with ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``: dynamo adds
one for every graph it compiles, a recompile included. The last test shows the counter catches the naive
order (``compile_repeated_blocks`` after the cache hooks are installed): there every request with another
cache recompiles. The recompile tests use the ``aot_eager`` backend (dynamo's tracing and guards are those
of inductor; only code generation is skipped); the equality test compiles with inductor, as the worker does,
and needs a C compiler.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from service.core.cache import resolve_cache
from service.core.model_profile import TINY_PROFILE
from tests.calibrated_models import calibrated_copy, flat_calibration
from tests.params import PARAMS
from worker.engine import WanEngine

MAG_STEPS = 8
# Every kind of cache, at several step counts; the thresholds are high enough that each skips some work.
REQUESTS: list[tuple[Any, int]] = [
    ("none", 4),
    ("balanced", 6),
    ({"method": "adaptive", "threshold": 0.5, "max_consecutive_skips": 2}, 5),
    ({"method": "easycache", "threshold": 0.5, "warmup_ratio": 0.25}, 7),
    ({"method": "magcache", "threshold": 0.1, "max_skip_steps": 2, "retention_ratio": 0.25}, MAG_STEPS),
    ({"method": "teacache", "threshold": 0.5, "warmup_ratio": 0.25}, 6),
    ({"step_start": 1, "step_end": 7, "step_interval": 2, "block_start": 0, "block_end": 2}, 8),
    ("none", 3),
]
FRAMES_ATOL = 1e-3
"""Inductor reorders and fuses float32 arithmetic: the frames (in [0, 1]) may differ in the last bits of the
transformer's output, carried through the steps and the VAE; measured here about 1e-6."""


@pytest.fixture(scope="module")
def calibrated_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calibration = flat_calibration(MAG_STEPS, "tests/integration/test_compile_recompiles.py")
    return calibrated_copy(tiny_model_dir, tmp_path_factory.mktemp("calibrated"), calibration)


def compiled_graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def serve_requests(engine: WanEngine) -> list[dict[str, Any]]:
    """Run every request of ``REQUESTS`` (frames 64x64x17, guidance on); their cache reports."""
    reports = []
    for cache, steps in REQUESTS:
        spec = resolve_cache(cache, num_steps=steps, num_layers=TINY_PROFILE.num_layers)
        result = engine.generate(dataclasses.replace(PARAMS, num_inference_steps=steps, cache=spec))
        assert result.cache is not None
        reports.append(result.cache)
    return reports


@pytest.mark.parametrize("mode", ["blocks", "full"])
def test_requests_with_other_caches_and_steps_compile_nothing_after_the_warm_up(
    calibrated_model: Path, mode: str
) -> None:
    torch._dynamo.reset()
    engine = WanEngine.load(calibrated_model, device="cpu", compile=mode, compile_backend="aot_eager")
    warmed_up = compiled_graphs()
    assert warmed_up >= 1, "the warm-up at load compiled nothing"

    reports = serve_requests(engine)

    assert compiled_graphs() == warmed_up
    assert engine.layout["compile"] == mode
    # The hooks did act: every cache skipped some of its work (blocks or whole passes).
    skipped = [report["method"] for report in reports if report["blocks_skipped"] > 0]
    assert set(skipped) == {"dit", "adaptive", "easycache", "magcache", "teacache"}


def test_compiled_blocks_give_the_eager_frames(engine: WanEngine, calibrated_model: Path) -> None:
    torch._dynamo.reset()
    compiled = WanEngine.load(calibrated_model, device="cpu", compile="blocks")  # inductor, as served
    for cache, steps in [("none", 4), ("balanced", 6)]:
        params = dataclasses.replace(
            PARAMS,
            num_inference_steps=steps,
            cache=resolve_cache(cache, num_steps=steps, num_layers=TINY_PROFILE.num_layers),
        )
        eager_frames, compiled_frames = engine.generate(params).frames, compiled.generate(params).frames
        assert eager_frames is not None and compiled_frames is not None
        np.testing.assert_allclose(compiled_frames, eager_frames, rtol=0, atol=FRAMES_ATOL)


def test_compiling_the_hooked_blocks_naively_recompiles_per_request(calibrated_model: Path) -> None:
    """The counter above would see the naive order: diffusers' ``compile_repeated_blocks`` after the cache
    hooks compiles the hooks' Python too, and dynamo's guards on their state fail with each new cache."""
    torch._dynamo.reset()
    engine = WanEngine.load(calibrated_model, device="cpu")
    engine.pipe.transformer.compile_repeated_blocks(backend="aot_eager")
    engine.generate(dataclasses.replace(PARAMS, num_inference_steps=2))  # the warm-up
    warmed_up = compiled_graphs()

    serve_requests(engine)

    assert compiled_graphs() > warmed_up
