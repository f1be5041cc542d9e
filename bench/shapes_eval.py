"""Does the shapes model draw what it is told? And what do the caches cost it?

    .venv/bin/python bench/shapes_eval.py [--seeds 3] [--caches none,balanced,fast,adaptive] [--json F]

Every colour x shape x direction prompt ("a {colour} {shape} moving {direction}") with several seeds goes
through the engine the worker runs, is written as the MP4 a user downloads, decoded again and read by
``shapes_model.analyse``: colour, direction and shape accuracy. With caches, each cached request is
also compared with the uncached request of the same prompt and seed: PSNR / SSIM of the decoded frames,
and the denoising loop's time against the uncached one (median; the host is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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

from bench.cache_metrics import video_quality
from service.core.cache import resolve_cache
from service.core.schemas import GenerationParams
from shapes_model.analyse import analyse_mp4
from shapes_model.data import COLOURS, DIRECTIONS, SHAPES
from worker.engine import WanEngine
from worker.tiny_model import SHAPES_MODEL_DIR
from worker.video import to_uint8, write_mp4

CACHES: dict[str, Any] = {
    "none": "none",
    "balanced": "balanced",
    "fast": "fast",
    "adaptive": "adaptive",
    "adaptive-0.1": {"method": "adaptive", "threshold": 0.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHAPES_MODEL_DIR)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--caches", default="none", help=f"comma-separated, of {', '.join(CACHES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the MP4s here")
    args = parser.parse_args()
    caches = args.caches.split(",")
    if caches[0] != "none":
        caches.insert(0, "none")  # the reference every cached run is compared with
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = WanEngine.load(args.model, device="cpu", dtype="float32")
    profile = engine.profile
    width, height = (int(v) for v in profile.default_size.split("x"))
    base = GenerationParams(
        prompt="", negative_prompt="", width=width, height=height, num_frames=args.frames,
        fps=profile.default_fps, num_inference_steps=args.steps or profile.default_steps,
        guidance_scale=args.guidance if args.guidance is not None else profile.default_guidance_scale, seed=0,
    )  # fmt: skip
    videos = args.keep or Path(tempfile.mkdtemp())
    videos.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, Any]] = []
    for (colour, shape, direction), seed in itertools.product(
        itertools.product(COLOURS, SHAPES, DIRECTIONS), range(args.seeds)
    ):
        prompt = f"a {colour} {shape} moving {direction}"
        reference: Any = None
        for name in caches:
            params = dataclasses.replace(base, prompt=prompt, seed=seed, cache=resolve_cache(CACHES[name]))
            result = engine.generate(params)
            assert result.frames is not None
            path = videos / f"{name}-{colour}-{shape}-{direction}-{seed}.mp4"
            write_mp4(to_uint8(result.frames), path, params.fps)
            seen = analyse_mp4(path)
            run = {
                "cache": name, "prompt": prompt, "seed": seed, "seen": dataclasses.asdict(seen),
                "colour_ok": seen.colour == colour, "shape_ok": seen.shape == shape,
                "direction_ok": seen.direction == direction, "denoise_s": result.timings["denoise_s"],
            }  # fmt: skip
            if name == "none":
                reference = result
            else:
                run.update(video_quality(result.frames, reference.frames))
                run["speedup"] = reference.timings["denoise_s"] / result.timings["denoise_s"]
                run["blocks_skipped"] = result.cache["blocks_skipped"] if result.cache else 0
            runs.append(run)
        print(f"{prompt} seed {seed}: " + ", ".join(
            f"{r['cache']}={r['seen']['colour']}/{r['seen']['shape']}/{r['seen']['direction']}"
            for r in runs[-len(caches):]), flush=True)  # fmt: skip

    rows = [summarise(name, [r for r in runs if r["cache"] == name]) for name in caches]
    prompts = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)
    settings = (f"{profile.name}, {width}x{height}, {args.frames} frames, {base.num_inference_steps} steps, "
                f"guidance {base.guidance_scale:g}, {prompts} prompts x {args.seeds} seeds, "
                f"{args.threads} threads; {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"\n{settings}\n")
    print(
        "| cache | colour | direction | shape | all three | PSNR dB vs uncached | SSIM | denoise speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        quality = (f"{row['psnr_db']:.1f} | {row['ssim']:.4f} | x{row['speedup']:.2f}"
                   if "psnr_db" in row else "- | - | -")  # fmt: skip
        print(f"| {row['cache']} | {row['colour']:.1%} | {row['direction']:.1%} | {row['shape']:.1%} "
              f"| {row['all']:.1%} | {quality} |")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows, "runs": runs}, indent=1))


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cache": name,
        "videos": len(runs),
        "colour": float(np.mean([r["colour_ok"] for r in runs])),
        "direction": float(np.mean([r["direction_ok"] for r in runs])),
        "shape": float(np.mean([r["shape_ok"] for r in runs])),
        "all": float(np.mean([r["colour_ok"] and r["shape_ok"] and r["direction_ok"] for r in runs])),
    }
    if name != "none":
        row["psnr_db"] = float(np.mean([r["psnr_db"] for r in runs]))
        row["ssim"] = float(np.mean([r["ssim"] for r in runs]))
        row["speedup"] = statistics.median(r["speedup"] for r in runs)
    return row


if __name__ == "__main__":
    main()
