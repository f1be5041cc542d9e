"""Does the shapes model draw what it is told? And what do the caches cost it?

    .venv/bin/python bench/shapes_eval.py [--seeds 3] [--caches none,balanced,fast,adaptive] [--json F]
        [--steps 50] [--prompt-stride 3] [--plot F.svg] [--unseen] [--strips DIR]

Every colour x shape x direction prompt ("a {colour} {shape} moving {direction}") with several seeds goes
through the engine the worker runs, is written as the MP4 a user downloads, decoded again and read by
``shapes_model.analyse``: colour, direction and shape accuracy. With caches, each cached request is
also compared with the uncached request of the same prompt and seed: PSNR / SSIM of the decoded frames,
and the denoising loop's time against the uncached one (median; the host is shared).

Every frame is also read on its own (``analyse_each_frame``), since a whole-video mean hides a colour that
drifts late in the clip: the share of frames with the asked colour and shape, with an object, with a
single one, how sharp its edge is, how much of the object is another colour (patches), and each frame
position's accuracy over the videos. ``--unseen`` asks
with seeds from 1000 and wordings that no training prompt uses (``UNSEEN_WORDINGS``); ``--strips DIR``
writes a few videos' frames side by side as PNGs, the worst ones among them.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache_metrics import Panel, scatter_svg, video_quality
from service.core.cache import resolve_cache
from service.core.schemas import GenerationParams
from shapes_model.analyse import (
    FrameAnalysis,
    accuracy_by_position,
    analyse_each_frame,
    analyse_mp4,
    score_frames,
)
from shapes_model.data import COLOURS, DIRECTIONS, SHAPES
from worker.engine import WanEngine
from worker.tiny_model import SHAPES_MODEL_DIR
from worker.video import read_mp4, to_uint8, write_mp4

CACHES: dict[str, Any] = {
    "none": "none",
    "balanced": "balanced",
    "fast": "fast",
    "adaptive": "adaptive",
    "adaptive-0.1": {"method": "adaptive", "threshold": 0.1},
    "adaptive-0.2": {"method": "adaptive", "threshold": 0.2},
    "adaptive-0.1-together": {"method": "adaptive", "threshold": 0.1, "branches": "together"},
    "adaptive-0.2-together": {"method": "adaptive", "threshold": 0.2, "branches": "together"},
    "magcache": "magcache",
    "magcache-0.24-k4": {"method": "magcache", "threshold": 0.24, "max_skip_steps": 4},
    "magcache-0.5-k6": {"method": "magcache", "threshold": 0.5, "max_skip_steps": 6},
    "teacache": "teacache",
    "teacache-0.15": {"method": "teacache", "threshold": 0.15},
    "teacache-0.2": {"method": "teacache", "threshold": 0.2},
    "teacache-0.4": {"method": "teacache", "threshold": 0.4},
    "easycache": "easycache",
    "easycache-0.05": {"method": "easycache", "threshold": 0.05},
    "easycache-0.08": {"method": "easycache", "threshold": 0.08},
    "easycache-0.1": {"method": "easycache", "threshold": 0.1},
    "easycache-0.2": {"method": "easycache", "threshold": 0.2},
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
    parser.add_argument(
        "--prompt-stride", type=int, default=1, help="every k-th prompt of the 60 (1: all of them)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="an SVG of PSNR against speed-up")
    parser.add_argument("--keep", type=Path, default=None, help="keep the MP4s here")
    parser.add_argument(
        "--unseen", action="store_true", help=f"seeds from {UNSEEN_SEED} and wordings training never used"
    )
    parser.add_argument("--strips", type=Path, default=None, help="PNG strips of a few videos' frames here")
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
    prompts = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))[:: args.prompt_stride]
    seeds = range(UNSEEN_SEED, UNSEEN_SEED + args.seeds) if args.unseen else range(args.seeds)
    for index, ((colour, shape, direction), seed) in enumerate(itertools.product(prompts, seeds)):
        wording = UNSEEN_WORDINGS[index % len(UNSEEN_WORDINGS)] if args.unseen else WORDING
        prompt = wording.format(colour=colour, shape=shape, direction=direction)
        reference: Any = None
        for name in caches:
            cache = resolve_cache(
                CACHES[name],
                num_steps=base.num_inference_steps,
                num_layers=profile.num_layers,
                calibrations=engine.calibration.methods,
            )
            params = dataclasses.replace(base, prompt=prompt, seed=seed, cache=cache)
            result = engine.generate(params)
            assert result.frames is not None
            path = videos / f"{name}-{colour}-{shape}-{direction}-{seed}.mp4"
            write_mp4(to_uint8(result.frames), path, params.fps)
            seen = analyse_mp4(path)
            each = analyse_each_frame(read_mp4(path))
            run = {
                "cache": name, "prompt": prompt, "seed": seed, "seen": dataclasses.asdict(seen),
                "colour_ok": seen.colour == colour, "shape_ok": seen.shape == shape,
                "direction_ok": seen.direction == direction, "denoise_s": result.timings["denoise_s"],
                "asked": {"colour": colour, "shape": shape, "direction": direction}, "video": str(path),
                "per_frame": dataclasses.asdict(score_frames(each, colour, shape)),
            }  # fmt: skip
            if name == "none":
                reference = result
            else:
                run.update(video_quality(result.frames, reference.frames))
                run["speedup"] = reference.timings["denoise_s"] / result.timings["denoise_s"]
                counts = result.cache or {}
                run["blocks_skipped"] = counts.get("blocks_skipped", 0)
                total = counts.get("blocks_skipped", 0) + counts.get("blocks_computed", 0)
                run["blocks_skipped_share"] = counts.get("blocks_skipped", 0) / total if total else 0.0
                computed = counts.get("blocks_computed", 0)
                run["ideal_speedup"] = total / computed if computed else 1.0
            runs.append(run)
        print(f"{prompt} seed {seed}: " + ", ".join(
            f"{r['cache']}={r['seen']['colour']}/{r['seen']['shape']}/{r['seen']['direction']}"
            for r in runs[-len(caches):]), flush=True)  # fmt: skip

    rows = [summarise(name, [r for r in runs if r["cache"] == name]) for name in caches]
    settings = (f"{profile.name}, {width}x{height}, {args.frames} frames, {base.num_inference_steps} steps, "
                f"guidance {base.guidance_scale:g}, {len(prompts)} prompts x {args.seeds} seeds, "
                f"{'unseen seeds and wordings, ' if args.unseen else ''}"
                f"{args.threads} threads; {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"\n{settings}\n")
    print(
        "| cache | blocks skipped | ideal speed-up | denoise speed-up (median) | PSNR dB (mean; worst frame) "
        "| SSIM | colour | direction | shape | all three |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        quality = (f"{row['blocks_skipped_share']:.1%} | x{row['ideal_speedup']:.2f} | x{row['speedup']:.2f} "
                   f"| {row['psnr_db']:.1f}; {row['psnr_min_db']:.1f} | {row['ssim']:.4f}"
                   if "psnr_db" in row else "0 | x1.00 | x1.00 | - | -")  # fmt: skip
        print(f"| {row['cache']} | {quality} | {row['colour']:.1%} | {row['direction']:.1%} "
              f"| {row['shape']:.1%} | {row['all']:.1%} |")  # fmt: skip
    for row in rows:
        row["per_frame"] = summarise_frames([r for r in runs if r["cache"] == row["cache"]])
    print_frame_rows(rows)
    if args.strips is not None:
        write_strips([r for r in runs if r["cache"] == "none"], args.strips)
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows, "runs": runs}, indent=1))
    if args.plot is not None:
        cached = [row for row in rows if "psnr_db" in row]
        line = [("30 dB", 30.0)]
        mean = [(row["cache"], row["speedup"], row["psnr_db"]) for row in cached]
        worst = [(row["cache"], row["speedup"], row["psnr_min_db"]) for row in cached]
        args.plot.write_text(scatter_svg([
            Panel("quality against speed-up", "denoise speed-up (median)", "PSNR dB (mean)", mean, line),
            Panel("worst frame", "denoise speed-up (median)", "PSNR dB, worst frame", worst, line),
        ], f"Caches on {profile.name}, {base.num_inference_steps} steps"))  # fmt: skip


WORDING = "a {colour} {shape} moving {direction}"
UNSEEN_SEED = 1000
UNSEEN_WORDINGS = (
    "a {colour} {shape} is moving {direction}",
    "the {colour} {shape} goes {direction}",
    "a {colour} {shape} slides {direction}",
    "{colour} {shape}, it moves {direction}",
    "a {colour} {shape} moving {direction} across the dark background",
    "a {shape} that is {colour}, moving {direction}",
)
"""Wordings none of ``shapes_model.data.PROMPT_TEMPLATES`` says, of words the model's vocabulary has."""
STRIPS = 6
STRIP_GAP = (48, 48, 56)
"""Between frames and under them; the bars under each frame: the colour read, and white where the
asked shape is read."""


def summarise_frames(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The frame-by-frame measures over ``runs`` (one cache's), with each frame position's accuracy."""
    scores = [r["per_frame"] for r in runs]
    sharp = [s["sharpness"] for s in scores if s["sharpness"] is not None]
    off = [s["off_colour"] for s in scores if s["off_colour"] is not None]
    return {
        "colour_90": float(np.mean([s["colour"] >= 0.9 for s in scores])),
        "colour": float(np.mean([s["colour"] for s in scores])),
        "shape": float(np.mean([s["shape"] for s in scores])),
        "present": float(np.mean([s["present"] for s in scores])),
        "single": float(np.mean([s["single"] for s in scores])),
        "sharpness": float(np.mean(sharp)) if sharp else None,
        "off_colour": float(np.mean(off)) if off else None,
        "videos_patched": float(np.mean([s["patched"] > 0 for s in scores])),
        "colour_by_class": {
            c: float(np.mean([r["per_frame"]["colour"] for r in runs if r["asked"]["colour"] == c]))
            for c in COLOURS
            if any(r["asked"]["colour"] == c for r in runs)
        },
        "shape_by_class": {
            s: float(np.mean([r["per_frame"]["shape"] for r in runs if r["asked"]["shape"] == s]))
            for s in SHAPES
            if any(r["asked"]["shape"] == s for r in runs)
        },
        "colour_by_position": accuracy_by_position([s["colour_by_frame"] for s in scores]),
        "shape_by_position": accuracy_by_position([s["shape_by_frame"] for s in scores]),
    }


def print_frame_rows(rows: list[dict[str, Any]]) -> None:
    print("\nFrame by frame (every frame read on its own; a frame with no object counts as wrong):\n")
    print(
        "| cache | videos with the asked colour in >= 90% of frames | frames with the asked colour "
        "| frames with the asked shape | object present | single object | sharpness "
        "| object pixels off its colour | videos with a patched frame |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        f = row["per_frame"]
        sharpness = "-" if f["sharpness"] is None else f"{f['sharpness']:.2f}"
        off = "-" if f["off_colour"] is None else f"{f['off_colour']:.1%}"
        print(f"| {row['cache']} | {f['colour_90']:.1%} | {f['colour']:.1%} | {f['shape']:.1%} "
              f"| {f['present']:.1%} | {f['single']:.1%} | {sharpness} | {off} "
              f"| {f['videos_patched']:.1%} |")  # fmt: skip
    for row in rows:
        f = row["per_frame"]
        print(f"\n{row['cache']}, by class (share of frames): "
              + ", ".join(f"{k} {v:.0%}" for k, v in f["colour_by_class"].items()) + "; "
              + ", ".join(f"{k} {v:.0%}" for k, v in f["shape_by_class"].items()))  # fmt: skip
        for what in ("colour", "shape"):
            by_position = " ".join(f"{v:.0%}" for v in f[f"{what}_by_position"])
            print(f"{row['cache']}, {what} right by frame index (0..): {by_position}")


def write_strips(runs: list[dict[str, Any]], folder: Path, count: int = STRIPS) -> list[Path]:
    """PNGs of ``count`` uncached videos, every frame side by side: the worst half by frame-by-frame colour
    and shape, the rest spread over the others up to the best."""
    ranked = sorted(runs, key=lambda r: (r["per_frame"]["colour"] + r["per_frame"]["shape"], r["video"]))
    worst = count // 2
    spread = [worst + round(i * (len(ranked) - 1 - worst) / max(count - worst - 1, 1))
              for i in range(count - worst)]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in dict.fromkeys(i for i in [*range(worst), *spread] if 0 <= i < len(ranked)):
        chosen = ranked[index]
        asked = chosen["asked"]
        frames = read_mp4(Path(chosen["video"]))
        path = folder / (f"{asked['colour']}-{asked['shape']}-{asked['direction']}-seed{chosen['seed']}"
                         f"-{len(frames)}f.png")  # fmt: skip
        image = Image.fromarray(strip(frames, analyse_each_frame(frames), asked["shape"]))
        # 64 colours keep every colour a reader tells apart, in a third of the bytes (decoding noise).
        image.quantize(64, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        written.append(path)
    return written


def strip(frames: np.ndarray, each: list[FrameAnalysis], shape: str) -> np.ndarray:
    """Every frame side by side, and under each a bar in the colour read there and a white bar where the
    asked shape is read."""
    count, height, width, _ = frames.shape
    gap, colour_bar, shape_bar = 2, 6, 3
    image = np.empty((height + 2 * gap + colour_bar + shape_bar, count * (width + gap) - gap, 3), np.uint8)
    image[:] = STRIP_GAP
    for i, (frame, seen) in enumerate(zip(frames, each, strict=True)):
        x = i * (width + gap)
        image[:height, x : x + width] = frame
        if seen.colour is not None:
            image[height + gap : height + gap + colour_bar, x : x + width] = COLOURS[seen.colour]
        if seen.shape == shape:
            image[-shape_bar:, x : x + width] = 255
    return image


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
        row["psnr_min_db"] = float(np.min([r["psnr_min_db"] for r in runs]))
        row["ssim"] = float(np.mean([r["ssim"] for r in runs]))
        row["speedup"] = statistics.median(r["speedup"] for r in runs)
        row["ideal_speedup"] = float(np.mean([r["ideal_speedup"] for r in runs]))
        row["blocks_skipped_share"] = float(np.mean([r["blocks_skipped_share"] for r in runs]))
    return row


if __name__ == "__main__":
    main()
