"""Read a generated clip and say what moves in it: colour, shape and direction. Deterministic, no model.

    python -m shapes_model.analyse [--per-frame] video.mp4

The background is each frame's median colour (the object covers a few percent of the frame). Object
pixels are those far from it; the object's colour is their mean, refined once so that the mask is cut
half-way between background and object (a soft edge then counts as it looks). Colour is read from the
hue of the mean (white: low saturation), direction from the centroid's path between the first and last
frames where an object is found, and shape from how much of its bounding box the object fills (square
~1, circle ~0.8, triangle ~0.5).

The whole-video reading averages a drifting colour away, so every frame is also read on its own
(``analyse_each_frame``): is there an object, is it one connected object, its colour, its shape, how
crisp its edge is, how much of it is another colour than its mean (a patch); ``score_frames`` turns that
into what fraction of a video's frames show what was asked.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
from collections.abc import Sequence
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


# Frame by frame.

# The thresholds sit half-way across the gaps between the shapes ``shapes_model.data`` draws (axis-aligned
# squares, upward triangles: the only ones training shows), not where the model's blobs would pass.
FILL_TRIANGLE = 0.64
"""Below this share of its bounding box filled, a frame's object is a triangle (drawn ones: 0.49-0.59;
drawn circles 0.69-0.86)."""
TAPER_TRIANGLE = 0.5
"""Below this taper (width of the top third over the bottom third), a triangle too (drawn ones: 0.15-0.28,
circles 0.78 and more): an upward triangle whose corners are rounded still narrows to the top."""
CORNER_LINE = 1.3
"""The bounding box's corners: where |u| + |v| > CORNER_LINE, (u, v) in [-1, 1] across the box. An
inscribed circle reaches 1.41 there, a square fills them, an upward triangle fills a third of them."""
CORNERS_SQUARE = 0.6
"""At or above this share of its box's corners filled, a frame's (non-triangle) object is a square."""
PATCHED = 0.1
"""At or above this share of its inner pixels off its colour, a frame's object carries a patch of another
colour (drawn clips: none off)."""
SHARPNESS_REFERENCE = 0.70
"""The mean edge step (see ``_edge_step``) of clips drawn by ``shapes_model.data.render``, so that a
cleanly drawn clip scores ~1."""


@dataclass(frozen=True)
class FrameAnalysis:
    """What one frame shows. With no object, only ``present`` and ``objects`` say anything."""

    present: bool
    objects: int
    """Connected objects (8-connected, at least MIN_PIXELS each) that stand out from the background."""
    colour: str | None
    """Nearest of the five colours to the largest object's mean colour."""
    shape: str | None
    fill: float | None
    """The largest object's share of its bounding box."""
    corners: float | None
    """The share of its bounding box's corners (``CORNER_LINE``) that the largest object fills."""
    taper: float | None
    """The object's mean width in the top third of its box over that in the bottom third."""
    sharpness: float | None
    """The object's contrast step across its edge, per pixel, over that of a drawn clip: ~1 there; 0.5
    for a drawn clip blurred by a 3-pixel box, 0.32 by a 5-pixel one."""
    centroid: tuple[float, float] | None
    pixels: int
    off_colour: float | None = None
    """The share of the object's inner pixels whose own colour is not the object's: a patch of another
    colour that the object's mean colour hides."""

    @property
    def single(self) -> bool:
        return self.objects == 1


NOTHING = FrameAnalysis(False, 0, None, None, None, None, None, None, None, 0)


def analyse_each_frame(frames: np.ndarray) -> list[FrameAnalysis]:
    """Analyse every uint8 frame of (T, H, W, 3) on its own: its background, its object and the object's
    colour are that frame's, so a colour that drifts or a shape that melts shows in the frames it does."""
    return [_analyse_frame(frame.astype(np.float32)) for frame in frames]


def _analyse_frame(frame: np.ndarray) -> FrameAnalysis:
    background = np.median(frame.reshape(-1, 3), axis=0)
    coarse = np.abs(frame - background).max(axis=-1) > COARSE_THRESHOLD
    labels = _components(coarse)
    sizes = np.bincount(labels.ravel())[1:]
    if not (sizes >= MIN_PIXELS).any():
        return NOTHING
    largest = labels == 1 + int(np.argmax(sizes))
    # Refine as the whole-video reading does, with this frame's object colour: cut half-way.
    span = frame[largest].mean(axis=0) - background
    contrast = ((frame - background) * span).sum(-1) / max(float((span * span).sum()), 1e-6)
    refined = contrast > 0.5
    labels = _components(refined | coarse)
    sizes = np.bincount(labels.ravel())[1:]
    objects = int((sizes >= MIN_PIXELS).sum())
    whole = labels == 1 + int(np.argmax(sizes))  # with any patch far from the mean colour
    mask = whole & refined
    if mask.sum() < MIN_PIXELS:
        return dataclasses.replace(NOTHING, objects=objects)
    colour = _colour_of(frame[mask].mean(axis=0))
    fill, corners, taper = _shape_measures(mask)
    ys, xs = np.nonzero(mask)
    return FrameAnalysis(
        present=True,
        objects=objects,
        colour=colour,
        shape=_shape(fill, corners, taper),
        fill=round(fill, 3),
        corners=round(corners, 3),
        taper=round(taper, 3),
        sharpness=round(_edge_step(np.clip(contrast, 0.0, 1.0), mask) / SHARPNESS_REFERENCE, 3),
        centroid=(round(float(xs.mean()), 2), round(float(ys.mean()), 2)),
        pixels=int(mask.sum()),
        off_colour=round(_off_colour(frame, whole, colour), 3),
    )


def _colour_of(rgb: np.ndarray) -> str:
    hue, saturation, _ = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    return _colour(hue * 360, saturation)


def _off_colour(frame: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """The share of the mask's inner pixels (all four neighbours on it too: an edge pixel blends into the
    background, so its hue is not the object's) whose own colour is not ``colour``."""
    padded = np.pad(mask, 1)
    inner = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels = frame[inner]
    return float(np.mean([_colour_of(rgb) != colour for rgb in pixels])) if len(pixels) else 0.0


def _shape(fill: float, corners: float, taper: float) -> str:
    if fill < FILL_TRIANGLE or taper < TAPER_TRIANGLE:
        return "triangle"
    return "square" if corners >= CORNERS_SQUARE else "circle"


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a 2-D mask: 0 off the mask, 1..n on it (no scipy here). Each pixel takes
    the smallest label among its neighbours until nothing changes; then labels are renumbered densely."""
    if not mask.any():
        return np.zeros(mask.shape, np.int64)
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]  # fewer pixels per pass
    height, width = crop.shape
    big = height * width + 1
    labels = np.where(crop, np.arange(1, big, dtype=np.int64).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        smallest = labels
        for dy in range(3):
            for dx in range(3):
                smallest = np.minimum(smallest, padded[dy : dy + height, dx : dx + width])
        smallest = np.where(crop, smallest, big)
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    values = np.concatenate([[0], np.where(crop, labels, 0).ravel()])  # 0 first, so it stays 0
    dense = np.zeros(mask.shape, np.int64)
    renumbered = np.unique(values, return_inverse=True)[1][1:]
    dense[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = renumbered.reshape(height, width)
    return dense


def _shape_measures(mask: np.ndarray) -> tuple[float, float, float]:
    """The mask's share of its bounding box, its share of the box's corners, and its taper."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    v, u = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32) + 0.5
    u = 2 * u / (x1 - x0) - 1
    v = 2 * v / (y1 - y0) - 1
    corner = np.abs(u) + np.abs(v) > CORNER_LINE
    corners = float(box[corner].mean()) if corner.any() else 0.0
    widths = box.sum(axis=1)
    third = max(len(widths) // 3, 1)
    taper = float(widths[:third].mean() / max(widths[-third:].mean(), 1.0))
    return float(box.mean()), corners, taper


def _edge_step(contrast: np.ndarray, mask: np.ndarray) -> float:
    """The mean change of ``contrast`` (0 background, 1 the object's colour) between 4-neighbours of
    which one is on the object and the other is not: near 1 for a hard edge, less the more pixels the
    edge ramps over."""
    step = np.concatenate([
        np.abs(np.diff(contrast, axis=axis))[np.diff(mask.astype(np.int8), axis=axis) != 0]
        for axis in (0, 1)
    ])  # fmt: skip
    return float(step.mean()) if step.size else 0.0


@dataclass(frozen=True)
class FrameScores:
    """How much of a video shows what its prompt asked, frame by frame."""

    colour: float
    """Share of frames whose object has the asked colour (a frame without one counts as wrong)."""
    shape: float
    present: float
    single: float
    sharpness: float | None
    """Mean over the frames with an object."""
    off_colour: float | None
    """Mean over the frames with an object of their ``off_colour``."""
    patched: float
    """Share of frames whose object is patched: at least ``PATCHED`` of it off its colour."""
    colour_by_frame: tuple[bool, ...]
    shape_by_frame: tuple[bool, ...]


def score_frames(frames: list[FrameAnalysis], colour: str, shape: str) -> FrameScores:
    colour_ok = tuple(f.colour == colour for f in frames)
    shape_ok = tuple(f.shape == shape for f in frames)
    sharp = [f.sharpness for f in frames if f.sharpness is not None]
    off = [f.off_colour for f in frames if f.off_colour is not None]
    return FrameScores(
        colour=float(np.mean(colour_ok)),
        shape=float(np.mean(shape_ok)),
        present=float(np.mean([f.present for f in frames])),
        single=float(np.mean([f.single for f in frames])),
        sharpness=float(np.mean(sharp)) if sharp else None,
        off_colour=float(np.mean(off)) if off else None,
        patched=float(np.mean([f.off_colour is not None and f.off_colour >= PATCHED for f in frames])),
        colour_by_frame=colour_ok,
        shape_by_frame=shape_ok,
    )


def accuracy_by_position(flags: Sequence[Sequence[bool]]) -> list[float]:
    """Frame index -> the share of videos right at that frame (videos of equal length)."""
    return [float(v) for v in np.mean(np.array(flags, dtype=np.float64), axis=0)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--per-frame", action="store_true", help="add every frame's reading")
    args = parser.parse_args()
    for path in args.videos:
        if not args.per_frame:
            print(json.dumps({"video": str(path), **asdict(analyse_mp4(path))}))
            continue
        from worker.video import read_mp4

        frames = read_mp4(path)
        each = [asdict(frame) for frame in analyse_each_frame(frames)]
        print(json.dumps({"video": str(path), **asdict(analyse_frames(frames)), "frames": each}))


if __name__ == "__main__":
    main()
