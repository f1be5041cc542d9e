"""What each cache costs in quality and gains in time, against the uncached video of the same request.

    .venv/bin/python bench/cache_quality.py [--steps 50] [--size 64] [--frames 17] [--threads 1]

A 30-block random-weight Wan transformer (Wan2.1-1.3B's depth, so the reference schedule "blocks 10-30 of
30" applies unscaled; 4 heads x 32 = d 128, ffn 512: narrow, to fit this CPU) with the tiny VAE and text
encoder, generated here. For every prompt x seed the uncached request runs first, then each cache
(same engine, same seed) followed by the uncached request again; we report the denoising loop's wall
time against the mean of the two uncached runs around it (median over prompts x seeds: the host is
shared, and its load moves times by tens of percent within a minute), the ideal ratio from the blocks
skipped, and PSNR / SSIM of every decoded
frame against the uncached frame (mean over frames, then over pairs; min over all frames), and the
relative L2 error of the final latents (before the tiny random VAE, which compresses differences).

Random weights make this a proxy: the video is noise, and how a real model's features drift between
steps (what the caches bet on) is not what a random one's do. The numbers rank the methods on this
model and show the cost of a schedule; they are no promise about Wan2.1's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache_metrics import Panel, scatter_svg, video_quality
from service.core.cache import DIT_CACHE_PRESETS, AdaptiveCacheConfig, dit_cache_preset, resolve_cache
from service.core.schemas import GenerationParams
from worker.engine import WanEngine
from worker.tiny_model import write_random_model

BLOCKS = 30
WIDER = {"num_layers": BLOCKS, "num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512}
"""What the benchmark's transformer changes in the tiny model's."""
PROMPTS = ("a red fox running through fresh snow", "a lighthouse on a cliff at sunset, waves crashing")
SEEDS = (0, 1)
REFERENCE = DIT_CACHE_PRESETS["balanced"].to_json()
ROWS: list[tuple[str, Any]] = [
    ("DiTCache reference = balanced (steps 20-47/2, blocks 10-30)", {"method": "dit", **REFERENCE}),
    ("DiTCache fast (steps 15-47/3, blocks 5-30)", "fast"),
    (f"adaptive, default (t={AdaptiveCacheConfig().threshold:g})", "adaptive"),
    ("adaptive t=0.1", {"method": "adaptive", "threshold": 0.1}),
    ("adaptive t=0.15", {"method": "adaptive", "threshold": 0.15}),
    # How far any block cache can move this model's video: every block, every step after the second.
    ("floor: all 30 blocks cached on every step after the second", "floor"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier timing)")
    parser.add_argument("--plot", type=Path, default=Path("docs/cache_plot.svg"))
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the plot from a --json file")
    args = parser.parse_args()
    if args.replot is not None:
        report = json.loads(args.replot.read_text())
        saved = report["args"]
        write_plot(report["rows"], args.plot, f"{saved['size']}x{saved['size']}, {saved['frames']} frames, "
                                              f"{saved['steps']} steps")  # fmt: skip
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model = write_random_model(Path(tempfile.mkdtemp()) / "wan-30", "wan-30-blocks-random", seed=2, **WIDER)
    engine = WanEngine.load(model, device="cpu", dtype="float32")
    latents: list[torch.Tensor] = []  # what each request decoded, for the latent-space error
    decode = engine._decode

    def keep_latents(z: torch.Tensor) -> np.ndarray:
        latents[:] = [z.detach().clone()]
        return decode(z)

    engine._decode = keep_latents  # type: ignore[method-assign]
    base = GenerationParams(prompt="", negative_prompt="blurry", width=args.size, height=args.size,
                            num_frames=args.frames, fps=16, num_inference_steps=args.steps,
                            guidance_scale=5.0, seed=0)  # fmt: skip
    engine.generate(dataclasses.replace(base, prompt="warm-up", num_inference_steps=2))
    # The balanced preset is the reference schedule at 50 steps and 30 blocks: one row serves both.
    assert dit_cache_preset("balanced", 50, BLOCKS).to_json() == REFERENCE

    runs: list[dict[str, Any]] = []
    noise: list[float] = []  # each uncached run's time over the previous one's: what the host's load does
    for prompt in PROMPTS:
        for seed in SEEDS:
            params = dataclasses.replace(base, prompt=prompt, seed=seed)
            reference = engine.generate(params)
            assert reference.frames is not None
            reference_latents, before_s = latents[-1], reference.timings["denoise_s"]
            for label, cache in ROWS:
                if cache == "floor":
                    cache = {"method": "dit", "step_start": 1, "step_end": args.steps,
                             "step_interval": args.steps, "block_start": 0, "block_end": BLOCKS}  # fmt: skip
                spec = resolve_cache(cache, num_steps=args.steps, num_layers=BLOCKS)
                result = engine.generate(dataclasses.replace(params, cache=spec))
                assert result.frames is not None and result.cache is not None
                latent_error = float((latents[-1] - reference_latents).norm() / reference_latents.norm())
                # An uncached run after every cached one: each is timed against its two neighbours, run
                # seconds apart; and the cache leaves nothing behind (the same frames every time).
                again = engine.generate(params)
                assert again.frames is not None and np.array_equal(again.frames, reference.frames)
                after_s = again.timings["denoise_s"]
                noise.append(after_s / before_s)
                runs.append({
                    "row": label, "prompt": prompt, "seed": seed, "cache": result.cache,
                    "denoise_s": result.timings["denoise_s"], "uncached_denoise_s": [before_s, after_s],
                    "speedup": (before_s + after_s) / 2 / result.timings["denoise_s"],
                    "latent_error": latent_error, **video_quality(result.frames, reference.frames),
                })  # fmt: skip
                before_s = after_s
                print(f"{label:62s} {prompt[:20]!r:24s} seed {seed}: x{runs[-1]['speedup']:.2f} "
                      f"{runs[-1]['psnr_db']:.2f} dB SSIM {runs[-1]['ssim']:.4f}", flush=True)  # fmt: skip

    rows = summarise(runs)
    seq = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    print(f"\n{args.size}x{args.size}, {args.frames} frames (S={seq}), {args.steps} steps, CFG 5, "
          f"{len(PROMPTS)} prompts x {len(SEEDS)} seeds, {args.threads} thread(s); "
          f"total {time.perf_counter() - started:.0f} s\n")  # fmt: skip
    spread = f"median x{statistics.median(noise):.2f}, range {min(noise):.2f}-{max(noise):.2f}"
    print(f"Uncached run over the previous uncached run (host noise): {spread}, {len(noise)} pairs\n")
    print("| cache | blocks skipped | ideal speed-up | measured speed-up: median (range) "
          "| PSNR dB (mean, min frame) | SSIM (mean, min frame) | latent error |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['row']} | {row['skipped_share']:.1%} | x{row['ideal']:.2f} | x{row['speedup']:.2f} "
              f"({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) | {row['psnr_db']:.2f} "
              f"({row['psnr_min_db']:.2f}) | {row['ssim']:.4f} ({row['ssim_min']:.4f}) "
              f"| {row['latent_error']:.2%} |")  # fmt: skip
    write_plot(rows, args.plot, f"{args.size}x{args.size}, {args.frames} frames, {args.steps} steps")
    print(f"\nplot: {args.plot}")
    if args.json is not None:
        arguments = vars(args) | {"plot": str(args.plot), "json": str(args.json)}
        report = {"args": arguments, "rows": rows, "runs": runs, "noise": noise}
        args.json.write_text(json.dumps(report, indent=1))


def write_plot(rows: list[dict[str, Any]], path: Path, request: str) -> None:
    """PSNR, SSIM and latent error against the measured speed-up; the floor row is a dashed line."""
    # Rows that skip nothing are the uncached video itself.
    shown = [row for row in rows if row["skipped_share"] > 0 and not row["row"].startswith("floor")]
    floor = next(row for row in rows if row["row"].startswith("floor"))
    floor_label = "floor: all blocks cached"
    x_label = "denoising-loop speed-up vs uncached (x, median)"
    panels = [
        ("PSNR of decoded frames (mean)", "PSNR (dB)", "psnr_db", 1.0),
        ("SSIM of decoded frames (mean)", "SSIM", "ssim", 1.0),
        ("relative error of the final latents", "error (%)", "latent_error", 100.0),
    ]
    title = f"Caches vs uncached, same request: random-weight 30-block Wan, {request} (a proxy)"
    path.write_text(scatter_svg([
        Panel(name, x_label, y_label, [(row["row"], row["speedup"], scale * row[key]) for row in shown],
              [(floor_label, scale * floor[key])])
        for name, y_label, key, scale in panels
    ], title, width=400))  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label, _ in ROWS:
        mine = [run for run in runs if run["row"] == label]
        computed = sum(run["cache"]["blocks_computed"] for run in mine)
        skipped = sum(run["cache"]["blocks_skipped"] for run in mine)
        speedups = [run["speedup"] for run in mine]
        rows.append({
            "row": label, "config": mine[0]["cache"]["config"],
            "skipped_share": skipped / (computed + skipped), "ideal": (computed + skipped) / computed,
            "speedup": statistics.median(speedups),
            "speedup_min": min(speedups), "speedup_max": max(speedups),
            "psnr_db": float(np.mean([run["psnr_db"] for run in mine])),
            "psnr_min_db": min(run["psnr_min_db"] for run in mine),
            "ssim": float(np.mean([run["ssim"] for run in mine])),
            "ssim_min": min(run["ssim_min"] for run in mine),
            "latent_error": float(np.mean([run["latent_error"] for run in mine])),
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
