"""Run requests one after another on every rank of a torchrun group.

torchrun --standalone --nproc-per-node 2 tests/distributed/run_requests.py MODEL OUT --ulysses 2 \
    [--caches CACHES_JSON] [--steps N] [--compile blocks] [--compile-backend aot_eager]

Request ``i`` is ``tests.params.PARAMS`` with the ``i``-th cache of ``--caches`` (each in the
job record's JSON form, ``CacheSpec.to_json()``; default: one uncached request). For it every rank writes
``rank{r}_{i}.json`` (its cache decision trace, local counts and the reported cache) and the leader writes
the float frames to ``frames_{i}.npy``.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from service.core.cache import CacheSpec
from tests.params import PARAMS
from worker.cache import block_cache_stats, block_cache_trace
from worker.engine import WanEngine
from worker.parallel import ParallelLayout, init_parallel, leave_group

parser = argparse.ArgumentParser()
parser.add_argument("model", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--caches", type=json.loads, default=[{"method": "none"}])
parser.add_argument("--steps", type=int, default=PARAMS.num_inference_steps)
parser.add_argument("--ulysses", type=int, default=1)
parser.add_argument("--cfg", type=int, default=1)
parser.add_argument("--compile", default="none", help="WANSERVE_COMPILE's modes")
parser.add_argument("--compile-backend", default="inductor")
args = parser.parse_args()

layout = ParallelLayout(int(os.environ["WORLD_SIZE"]), args.ulysses, args.cfg)
runtime = init_parallel(layout, "cpu", timeout_s=60)
engine = WanEngine.load(
    args.model, parallel=runtime, compile=args.compile, compile_backend=args.compile_backend
)
for index, cache in enumerate(args.caches):
    params = dataclasses.replace(PARAMS, num_inference_steps=args.steps, cache=CacheSpec.from_json(cache))
    result = engine.generate(params)
    transformer = engine.pipe.transformer
    report = {
        "trace": block_cache_trace(transformer),
        "local": block_cache_stats(transformer),
        "cache": result.cache,
    }
    (args.out / f"rank{runtime.rank}_{index}.json").write_text(json.dumps(report))
    if runtime.is_leader:
        assert result.frames is not None
        np.save(args.out / f"frames_{index}.npy", result.frames)
    else:
        assert result.frames is None, "followers do not decode"
leave_group(0)
