"""How well does a shapes VAE reconstruct drawn clips, frame by frame? The transformer can draw no better.

    .venv/bin/python bench/vae_check.py [--vae DIR] [--frames 17 33] [--clips 60] [--seed 1000] [--json F]

Clips drawn by ``shapes_model.data`` (seeds from 1000: none that training drew) are encoded (the
posterior's mean, as the recipe encodes its latents), decoded, written as the MP4 a user would download,
decoded again and read by ``shapes_model.analyse.analyse_each_frame``, exactly as ``bench/shapes_eval.py``
reads generated videos. The drawn clips themselves are read the same way, as the ceiling. Reported: the
share of frames with the drawn colour and shape, by shape class and by frame position, and sharpness.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes_model.analyse import accuracy_by_position, analyse_each_frame, score_frames
from shapes_model.data import SHAPES, Clip, render, sample_clip
from shapes_model.train_vae import to_tensor
from worker.tiny_model import SHAPES_MODEL_DIR
from worker.video import read_mp4, to_uint8, write_mp4


def reconstruct(vae: Any, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the VAE's uint8 reconstruction."""
    with torch.no_grad():
        latents = vae.encode(to_tensor(frames)[None]).latent_dist.mode()
        decoded = vae.decode(latents).sample[0]
    return to_uint8(((decoded + 1) / 2).permute(1, 2, 3, 0).numpy())


def through_mp4(frames: np.ndarray, folder: Path) -> np.ndarray:
    path = folder / "clip.mp4"
    write_mp4(frames, path, fps=16)
    return read_mp4(path)


def score(clips: list[Clip], videos: list[np.ndarray]) -> dict[str, Any]:
    runs = [
        (clip, score_frames(analyse_each_frame(video), clip.colour, clip.shape))
        for clip, video in zip(clips, videos, strict=True)
    ]
    sharp = [s.sharpness for _, s in runs if s.sharpness is not None]
    return {
        "colour": round(float(np.mean([s.colour for _, s in runs])), 3),
        "videos_colour_90": round(float(np.mean([s.colour >= 0.9 for _, s in runs])), 3),
        "shape": round(float(np.mean([s.shape for _, s in runs])), 3),
        "shape_by_class": {
            shape: round(float(np.mean([s.shape for c, s in runs if c.shape == shape])), 3)
            for shape in SHAPES
        },
        "single": round(float(np.mean([s.single for _, s in runs])), 3),
        "sharpness": round(float(np.mean(sharp)), 3) if sharp else None,
        "colour_by_frame": [round(a, 2) for a in accuracy_by_position([s.colour_by_frame for _, s in runs])],
        "shape_by_frame": [round(a, 2) for a in accuracy_by_position([s.shape_by_frame for _, s in runs])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vae", type=Path, default=SHAPES_MODEL_DIR / "vae")
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 33])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan.from_pretrained(args.vae).eval()
    report: dict[str, Any] = {"vae": str(args.vae), "clips": args.clips}
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            rng = random.Random(args.seed + frames)
            clips = [sample_clip(rng) for _ in range(args.clips)]
            drawn = [render(clip, frames) for clip in clips]
            report[f"drawn_{frames}"] = score(clips, [through_mp4(v, Path(tmp)) for v in drawn])
            report[f"vae_{frames}"] = score(
                clips, [through_mp4(reconstruct(vae, v), Path(tmp)) for v in drawn]
            )
            for name in ("drawn", "vae"):
                print(name, frames, json.dumps(report[f"{name}_{frames}"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
