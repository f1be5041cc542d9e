"""Read a generated clip and say what moves in it: colour, shape and direction. Deterministic, no model.

    python -m shapes_model.analyse video.mp4

The background is each frame's median colour (the object covers a few percent of the frame). Object
pixels are those far from it; the object's colour is their mean, refined once so that the mask is cut
half-way between background and object (a soft edge then counts as it looks). Colour is read from the
hue of the mean (white: low saturation), direction from the centroid's path between the first and last
frames where an object is found, and shape from how much of its bounding box the object fills (square
~1, circle ~0.8, triangle ~0.5).
"""

from __future__ import annotations

import argparse
import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shapes_model.data import COLOURS

COARSE_THRESHOLD = 48.0
"""Distance from the background (0-255, max over channels) that marks a pixel as the object's."""
MIN_PIXELS = 6
MIN_TRAVEL = 3.0
"""Centroid travel (pixels) below which the object is said not to move."""
WHITE_SATURATION = 0.3
FILL_SQUARE, FILL_CIRCLE = 0.9, 0.67


@dataclass(frozen=True)
class Analysis:
    colour: str | None
    shape: str | None
    direction: str | None
    """left, right, up, down; "still" if the object barely moves; None with no object."""
    hue: float | None
    saturation: float | None
    fill: float | None
    travel: tuple[float, float] | None
    """(dx, dy) of the centroid, first to last frame, pixels (y down)."""
    frames_with_object: int


def _hue_of(rgb: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


REFERENCE_HUES = {name: _hue_of(rgb) for name, rgb in COLOURS.items() if name != "white"}


def analyse_frames(frames: np.ndarray) -> Analysis:
    """Analyse uint8 frames (T, H, W, 3)."""
    frames = frames.astype(np.float32)
    backgrounds = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    coarse = np.abs(frames - backgrounds).max(axis=-1) > COARSE_THRESHOLD
    if coarse.sum() < MIN_PIXELS:
        return Analysis(None, None, None, None, None, None, None, 0)
    colour_rgb = frames[coarse].mean(axis=0)
    # Refine: a pixel is the object's when it is nearer the object's colour than the background's.
    span = colour_rgb[None, None, None, :] - backgrounds
    along = ((frames - backgrounds) * span).sum(-1) / np.maximum((span * span).sum(-1), 1e-6)
    masks = along > 0.5
    colour_rgb = frames[masks].mean(axis=0) if masks.any() else colour_rgb

    centroids, fills = [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) < MIN_PIXELS:
            continue
        centroids.append((xs.mean(), ys.mean()))
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fills.append(len(xs) / box)
    if not centroids:
        return Analysis(None, None, None, None, None, None, None, 0)
    hue, saturation, _ = colorsys.rgb_to_hsv(*(float(c) / 255 for c in colour_rgb))
    hue *= 360
    fill = float(np.median(fills))
    dx = float(centroids[-1][0] - centroids[0][0])
    dy = float(centroids[-1][1] - centroids[0][1])
    return Analysis(
        colour=_colour(hue, saturation),
        shape="square" if fill >= FILL_SQUARE else "circle" if fill >= FILL_CIRCLE else "triangle",
        direction=_direction(dx, dy),
        hue=round(hue, 1),
        saturation=round(saturation, 3),
        fill=round(fill, 3),
        travel=(round(dx, 2), round(dy, 2)),
        frames_with_object=len(centroids),
    )


def _colour(hue: float, saturation: float) -> str:
    if saturation < WHITE_SATURATION:
        return "white"
    return min(
        REFERENCE_HUES,
        key=lambda name: min(abs(hue - REFERENCE_HUES[name]), 360 - abs(hue - REFERENCE_HUES[name])),
    )


def _direction(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def analyse_mp4(path: Path) -> Analysis:
    from worker.video import read_mp4

    return analyse_frames(read_mp4(path))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path)
    for path in parser.parse_args().videos:
        print(json.dumps({"video": str(path), **asdict(analyse_mp4(path))}))


if __name__ == "__main__":
    main()
