"""Run one generation on every rank of a torchrun group; rank 0 saves the float frames.

torchrun --standalone --nproc-per-node 2 tests/distributed/run_engine.py MODEL_DIR OUT.npy --ulysses 2
"""

import argparse
import os
from pathlib import Path

import numpy as np

from tests.distributed.params import PARAMS
from worker.engine import WanEngine
from worker.parallel import ParallelLayout, init_parallel, shutdown_parallel

parser = argparse.ArgumentParser()
parser.add_argument("model", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--ulysses", type=int, default=1)
parser.add_argument("--cfg", type=int, default=1)
args = parser.parse_args()

layout = ParallelLayout(int(os.environ["WORLD_SIZE"]), args.ulysses, args.cfg)
runtime = init_parallel(layout, "cpu", timeout_s=60)
engine = WanEngine.load(args.model, parallel=runtime)
result = engine.generate(PARAMS)
if runtime.is_leader:
    assert result.frames is not None
    np.save(args.out, result.frames)
else:
    assert result.frames is None, "followers do not decode"
shutdown_parallel()
