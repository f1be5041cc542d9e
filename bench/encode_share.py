"""Would overlapping a job's MP4 encode and store with the next job's denoising pay? Its time says.

    .venv/bin/python bench/encode_share.py [--repeats 3]

After its last step, the leader decodes the latents, then encodes the MP4, the thumbnail and the sprite
sheet (``worker.video``, the worker's ``encode`` stage) and stores them (a rename into the storage folder,
or an upload). Overlapping that with the next job's denoising can save at most its own time per job. This
times the encode stage of the worker's own functions at Wan2.1's 832x480, 81 frames, and at the shapes
model's 64x64, 17 frames, on two contents: a shape moving across a flat background (encodes fast) and
the same over a fixed noise texture (H.264's hard case). The stored files' sizes show what a store moves.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes_model.data import render, sample_clip
from worker.video import write_mp4, write_spritesheet, write_thumbnail

SIZES = {"wan2.1 832x480x81": (81, 480, 832), "shapes 64x64x17": (17, 64, 64)}


def frames_of(content: str, frames: int, height: int, width: int) -> np.ndarray:
    video = render(sample_clip(random.Random(0)), frames, height, width)
    if content == "textured":
        texture = np.random.default_rng(0).integers(0, 48, (height, width, 3), dtype=np.uint8)
        video = np.where(video.max(axis=-1, keepdims=True) > 40, video, video + texture)
    return video


def encode_stage(video: np.ndarray, folder: Path) -> tuple[float, int]:
    """Seconds for the worker's encode stage, and the bytes it wrote."""
    started = time.perf_counter()
    write_mp4(video, folder / "video.mp4", 16)
    write_thumbnail(video, folder / "thumbnail.webp")
    write_spritesheet(video, folder / "spritesheet.webp")
    elapsed = time.perf_counter() - started
    return elapsed, sum(path.stat().st_size for path in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for size, (frames, height, width) in SIZES.items():
        for content in ("flat", "textured"):
            video = frames_of(content, frames, height, width)
            times, size_bytes = [], 0
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    elapsed, size_bytes = encode_stage(video, Path(tmp))
                times.append(elapsed)
            rows.append({"size": size, "content": content, "encode_s": round(statistics.median(times), 3),
                         "bytes": size_bytes})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
