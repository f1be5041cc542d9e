"""Caches in a worker group (fp32, CPU, gloo): every Ulysses rank takes the same decisions, and the frames
are those of one process with the same cache.

One torchrun run serves several requests in a row on an engine whose transformer has had context
parallelism since load: the cache is switched per request, never re-applied.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.cache import resolve_cache
from service.core.model_profile import TINY_PROFILE
from tests.calibrated_models import calibrated_copy, flat_calibration
from tests.params import PARAMS
from worker.cache import block_cache_stats, block_cache_trace
from worker.engine import WanEngine

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("run_requests.py")
STEPS = 8
THRESHOLD = 0.065
EASY_THRESHOLD = 0.2
REQUESTED: list[Any] = [
    "none",
    # block_start 0: the cached range starts at the block whose input context parallelism splits.
    {"step_start": 1, "step_end": 7, "step_interval": 2, "block_start": 0, "block_end": 2},
    {"method": "adaptive", "threshold": THRESHOLD, "max_consecutive_skips": 2},
    "balanced",
    "none",
    # The step-level caches: MagCache and TeaCache decide from the step alone (a calibration written for
    # this test), EasyCache from the latents, which every rank holds whole.
    {"method": "magcache", "threshold": 0.1, "max_skip_steps": 2, "retention_ratio": 0.25},
    {"method": "teacache", "threshold": 0.5, "warmup_ratio": 0.25},
    {"method": "easycache", "threshold": EASY_THRESHOLD, "warmup_ratio": 0.25},
    # The adaptive cache with the conditional branch deciding for both.
    {"method": "adaptive", "threshold": THRESHOLD, "max_consecutive_skips": 2, "branches": "together"},
]
# Resolved as the API resolves them for the tiny model.
CACHES = [resolve_cache(cache, num_steps=STEPS, num_layers=TINY_PROFILE.num_layers) for cache in REQUESTED]


@dataclasses.dataclass
class Run:
    frames: np.ndarray
    trace: list[dict[str, Any]]
    local: dict[str, int]
    cache: dict[str, Any]


def decisions(trace: list[dict[str, Any]]) -> list[tuple[str, int, bool]]:
    return [(entry["branch"], entry["step"], entry["skipped"]) for entry in trace]


@pytest.fixture(scope="module")
def calibrated_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calibration = flat_calibration(STEPS, "tests/distributed/test_cache_ulysses.py")
    return calibrated_copy(tiny_model_dir, tmp_path_factory.mktemp("calibrated"), calibration)


@pytest.fixture(scope="module")
def one_process(calibrated_model: Path) -> list[Run]:
    engine = WanEngine.load(calibrated_model)
    runs = []
    for cache in CACHES:
        result = engine.generate(dataclasses.replace(PARAMS, num_inference_steps=STEPS, cache=cache))
        transformer = engine.pipe.transformer
        trace = block_cache_trace(transformer)
        runs.append(Run(result.frames, trace, block_cache_stats(transformer), result.cache))
    adaptive = runs[2]
    changes = [entry["change"] for entry in adaptive.trace if "change" in entry]
    # A change within float noise of the threshold could flip between 1 and 2 ranks: keep clear of it.
    assert min(abs(change - THRESHOLD) for change in changes) > 1e-3, changes
    skipped = [entry["skipped"] for entry in adaptive.trace if "change" in entry]
    assert any(skipped) and not all(skipped), "the threshold should both skip and compute"
    assert runs[1].local["passes_skipped"] > 0 and runs[3].local["passes_skipped"] > 0
    easy = runs[-2]
    estimates = [entry["change"] for entry in easy.trace if "change" in entry]
    assert min(abs(estimate - EASY_THRESHOLD) for estimate in estimates) > 1e-3, estimates
    for run in runs[-4:]:
        skipped = [entry["skipped"] for entry in run.trace]
        assert any(skipped) and not all(skipped), run.cache
        # One decision per step for both branches.
        by_step = {(e["step"], e["branch"]): e["skipped"] for e in run.trace}
        assert all(by_step[(step, "cond")] == by_step[(step, "uncond")] for step in range(STEPS))
    return runs


def torchrun(nproc: int, *args: str, model: Path, out: Path) -> list[list[dict[str, Any]]]:
    """Per request, every rank's report; frames are left in ``out``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    done = subprocess.run(
        [
            *command,
            str(RUNNER),
            str(model),
            str(out),
            "--caches",
            json.dumps([c.to_json() for c in CACHES]),
            f"--steps={STEPS}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [
        [json.loads((out / f"rank{rank}_{index}.json").read_text()) for rank in range(nproc)]
        for index in range(len(CACHES))
    ]


def test_ulysses_ranks_take_the_same_decisions_and_match_one_process(
    one_process: list[Run], calibrated_model: Path, tmp_path: Path
) -> None:
    reports = torchrun(2, "--ulysses", "2", model=calibrated_model, out=tmp_path)
    for index, (reference, ranks) in enumerate(zip(one_process, reports, strict=True)):
        name = f"request {index}: {REQUESTED[index]}"
        frames = np.load(tmp_path / f"frames_{index}.npy")
        assert np.abs(frames - reference.frames).max() <= 1e-4, name
        # Every rank skipped the same blocks of the same passes, as one process did.
        first, second = (decisions(report["trace"]) for report in ranks)
        assert first == second == decisions(reference.trace), name
        assert ranks[0]["local"] == ranks[1]["local"] == reference.local, name
        assert ranks[0]["cache"] == ranks[1]["cache"] == reference.cache, name

    adaptive = [report["trace"] for report in reports[2]]
    compared = [i for i, entry in enumerate(adaptive[0]) if "change" in entry]
    assert compared
    for i in compared:
        # The all-reduced change is the same number on both ranks, and the whole sequence's change ...
        assert adaptive[0][i]["change"] == adaptive[1][i]["change"]
        assert adaptive[0][i]["change"] == pytest.approx(one_process[2].trace[i]["change"], rel=1e-4)
    # ... while each rank's own shard moved by a different amount: deciding on it would diverge.
    local_gaps = [abs(adaptive[0][i]["local_change"] - adaptive[1][i]["local_change"]) for i in compared]
    assert max(local_gaps) > 1e-3


def test_cfg_halves_run_their_own_branch_and_the_leader_reports_both(
    one_process: list[Run], calibrated_model: Path, tmp_path: Path
) -> None:
    reports = torchrun(2, "--cfg", "2", model=calibrated_model, out=tmp_path)
    for index, (reference, ranks) in enumerate(zip(one_process, reports, strict=True)):
        name = f"request {index}: {REQUESTED[index]}"
        assert np.abs(np.load(tmp_path / f"frames_{index}.npy") - reference.frames).max() <= 1e-4, name
        for rank, branch in enumerate(("cond", "uncond")):
            own = [entry for entry in decisions(reference.trace) if entry[0] == branch]
            assert decisions(ranks[rank]["trace"]) == own, name
        assert ranks[0]["cache"] == reference.cache, name  # counts summed over the two halves
