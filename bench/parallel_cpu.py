"""Time per denoising step for 1 vs 2 ranks on this CPU, and Ulysses all-to-all traffic against 4·S·d/p.

    .venv/bin/python bench/parallel_cpu.py [--steps 10] [--size 128] [--frames 33]

A mid-size random-weight Wan transformer (8 layers, 8 heads x 32 = d 256, ffn 1024) with the tiny VAE
and text encoder, generated here. Every layout runs under torchrun on gloo, one warm-up request then
one timed request; OMP_NUM_THREADS is set per layout so that each uses the same 2 cores in total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from worker.tiny_model import write_random_model

MID_TRANSFORMER = {"num_layers": 8, "num_attention_heads": 8, "attention_head_dim": 32, "ffn_dim": 1024}
"""What the benchmark's transformer changes in the tiny model's."""
HERE = Path(__file__).parent

LAYOUTS = [
    ("1 rank x 1 thread", 1, 1, 1, 1),
    ("1 rank x 2 threads", 1, 1, 1, 2),
    ("2 ranks Ulysses 2 (1 thread each)", 2, 2, 1, 1),
    ("2 ranks CFG 2 (1 thread each)", 2, 1, 2, 1),
]


def run(
    model: Path, nproc: int, ulysses: int, cfg: int, threads: int, args: argparse.Namespace
) -> list[dict]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        str(HERE / "parallel_rank.py"), str(model), str(out), f"--ulysses={ulysses}", f"--cfg={cfg}",
        f"--steps={args.steps}", f"--size={args.size}", f"--frames={args.frames}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parent)}
    subprocess.run(command, env=env, check=True, capture_output=True)
    return list(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=33)
    args = parser.parse_args()
    model = write_random_model(
        Path(tempfile.mkdtemp()) / "wan-mid", "wan-mid-random", seed=1, **MID_TRANSFORMER
    )
    seq = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    d = MID_TRANSFORMER["num_attention_heads"] * MID_TRANSFORMER["attention_head_dim"]
    layers = MID_TRANSFORMER["num_layers"]
    print(
        f"{args.size}x{args.size}, {args.frames} frames, {args.steps} steps, CFG 5: sequence S={seq}, d={d}"
    )
    print(f"{'layout':36s} {'s/step':>8s} {'text enc':>9s} {'VAE dec':>8s}  per rank")
    baseline = None
    for name, nproc, ulysses, cfg, threads in LAYOUTS:
        reports = run(model, nproc, ulysses, cfg, threads, args)
        leader = reports[0]["timings"]
        per_step = leader["denoise_s"] / args.steps
        baseline = baseline or per_step
        ranks = "; ".join(
            f"r{r['rank']}: enc {r['timings']['text_encode_s']:.3f} "
            f"dec {r['timings'].get('vae_decode_s', 0):.3f}"
            for r in reports
        )
        print(f"{name:36s} {per_step:8.4f} {leader['text_encode_s']:9.3f} {leader['vae_decode_s']:8.3f}  "
              f"x{baseline / per_step:.2f} vs 1x1 | {ranks}")  # fmt: skip
        if ulysses > 1:
            for r in reports:
                passes = 2 if cfg == 1 else 1  # forward passes per step on this rank
                calls = r["all_to_all_calls"] / (args.steps * layers * passes)
                elements = r["all_to_all_elements"] / (args.steps * layers * passes)
                model_elements = 4 * seq * d / ulysses
                print(f"    rank {r['rank']}: {calls:.0f} all-to-all calls and {elements:,.0f} elements "
                      f"({elements * 4 / 2**20:.2f} MiB fp32) per attention layer per pass; "
                      f"model 4*S*d/p = {model_elements:,.0f} "
                      f"(ratio {elements / model_elements:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
