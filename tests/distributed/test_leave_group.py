"""A rank leaves its group with its exit code, its output flushed, and without Python's finalization, where
a gloo worker thread still releasing a finished collective's tensors aborts the process (the CI failure
of test_parallel_layouts_match_one_process[cfg2]: rank 1 ended by SIGABRT after its last all_gather)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RANK = """
import atexit, logging, sys
from pathlib import Path
import torch
import torch.distributed as dist
from worker.parallel import leave_group

marker = Path(sys.argv[1])
atexit.register(marker.write_text, "finalized")
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
dist.init_process_group("gloo", init_method=f"file://{marker}.store", rank=0, world_size=1)
gathered = [torch.empty(4)]
dist.all_gather(gathered, torch.ones(4))
print("results written", end="")
logging.getLogger("rank").info("rank 0 leaving")
leave_group(int(sys.argv[2]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_rank_leaves_with_its_code_flushed_and_unfinalized(tmp_path: Path, code: int) -> None:
    marker = tmp_path / "finalized"
    done = subprocess.run(
        [sys.executable, "-c", RANK, str(marker), str(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == "results written"
    assert "rank 0 leaving" in done.stderr
    assert not marker.exists(), "the interpreter finalized (its atexit handlers ran)"
