"""One rank of bench/parallel_cpu.py (run by torchrun): time a generation and count all-to-all traffic."""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from diffusers.models import attention_dispatch

from service.core.schemas import GenerationParams
from worker.engine import WanEngine
from worker.parallel import ParallelLayout, init_parallel, leave_group

parser = argparse.ArgumentParser()
parser.add_argument("model", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--ulysses", type=int, default=1)
parser.add_argument("--cfg", type=int, default=1)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--size", type=int, default=128)
parser.add_argument("--frames", type=int, default=33)
args = parser.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

sent: list[int] = []
_all_to_all = attention_dispatch._all_to_all_single


def counting_all_to_all(x: torch.Tensor, group):  # type: ignore[no-untyped-def]
    sent.append(x.numel())
    return _all_to_all(x, group)


attention_dispatch._all_to_all_single = counting_all_to_all

layout = ParallelLayout(int(os.environ["WORLD_SIZE"]), args.ulysses, args.cfg)
runtime = init_parallel(layout, "cpu", timeout_s=600)
engine = WanEngine.load(args.model, parallel=runtime)
params = GenerationParams(
    prompt="a red fox in the snow", negative_prompt="blurry", width=args.size, height=args.size,
    num_frames=args.frames, fps=16, num_inference_steps=args.steps, guidance_scale=5.0, seed=0,
)  # fmt: skip
engine.generate(GenerationParams(**{**params.to_json(), "num_inference_steps": 1}))  # warm-up
sent.clear()
started = time.perf_counter()
result = engine.generate(params)
wall = time.perf_counter() - started
report = {
    "rank": runtime.rank,
    "wall_s": wall,
    "timings": result.timings,
    "all_to_all_calls": len(sent),
    "all_to_all_elements": sum(sent),
}
reports = runtime.gather(report)
if runtime.is_leader:
    args.out.write_text(json.dumps(reports))
leave_group(0)
