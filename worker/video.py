"""Frames to files: the MP4 (H.264, yuv420p, faststart), a thumbnail and a spritesheet; and the engine's
float frames to the uint8 frames these take."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np

SPRITESHEET_COLUMNS = 8


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8, rounding as imageio and PIL do."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode uint8 frames (F, H, W, 3) as H.264/yuv420p with the index up front for streaming."""
    iio.imwrite(
        path,
        frames,
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        # Wan sizes are multiples of 16, so imageio never needs to resize.
        macro_block_size=16,
        ffmpeg_params=["-movflags", "+faststart", "-crf", "18"],
    )


def write_thumbnail(frames: np.ndarray, path: Path) -> None:
    iio.imwrite(path, frames[len(frames) // 2], extension=".webp")


def write_spritesheet(frames: np.ndarray, path: Path) -> None:
    """All frames tiled left to right, top to bottom, SPRITESHEET_COLUMNS to a row."""
    count, height, width, channels = frames.shape
    columns = min(SPRITESHEET_COLUMNS, count)
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * height, columns * width, channels), dtype=frames.dtype)
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = frame
    iio.imwrite(path, sheet, extension=".jpg")


def read_mp4(path: Path) -> np.ndarray:
    """Decode an MP4 back into uint8 frames (tests and benchmarks)."""
    return np.stack(list(iio.imiter(path, plugin="FFMPEG")))
