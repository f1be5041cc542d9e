"""Ulysses and CFG parallelism give the frames of one process (fp32, CPU, gloo), compiled blocks too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.params import PARAMS

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("run_requests.py")


def torchrun(nproc: int, *args: str, model: Path, out: Path) -> np.ndarray:
    """The leader's frames of one uncached request; ``out`` is a folder."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    done = subprocess.run(
        [*command, str(RUNNER), str(model), str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return np.load(out / "frames_0.npy")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return torchrun(1, model=tiny_model_dir, out=tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize(
    ("nproc", "args"),
    [(2, ("--ulysses", "2")), (2, ("--cfg", "2")), (4, ("--ulysses", "2", "--cfg", "2"))],
    ids=["ulysses2", "cfg2", "ulysses2-cfg2"],
)
def test_parallel_layouts_match_one_process(
    reference: np.ndarray, tiny_model_dir: Path, tmp_path: Path, nproc: int, args: tuple[str, ...]
) -> None:
    frames = torchrun(nproc, *args, model=tiny_model_dir, out=tmp_path)
    assert frames.shape == reference.shape == (17, 64, 64, 3)
    assert np.abs(frames - reference).max() <= 1e-4


COMPILED_ATOL = 1e-4
"""Inductor reorders float32 arithmetic (test_compile_recompiles measures ~1e-6 in one process)."""


def test_ulysses_with_compiled_blocks_matches_one_eager_process(
    reference: np.ndarray, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The blocks are compiled (inductor, as the worker compiles) before Ulysses' hooks split the
    sequence, so the attention's all-to-all is met inside each compiled block's forward."""
    frames = torchrun(2, "--ulysses", "2", "--compile", "blocks", model=tiny_model_dir, out=tmp_path)
    assert frames.shape == reference.shape
    assert np.abs(frames - reference).max() <= COMPILED_ATOL


def test_one_process_in_torchrun_matches_the_plain_engine(reference: np.ndarray, engine) -> None:
    assert np.array_equal(engine.generate(PARAMS).frames, reference)
