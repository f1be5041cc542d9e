"""Video quality against a reference (PSNR, SSIM per frame) and a small SVG scatter plot, numpy only.

SSIM follows Wang et al. 2004 as most libraries do by default: an 11-tap Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, statistics over the window's valid positions, the mean of the SSIM map, and the
mean over colour channels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PSNR_CAP_DB = 100.0
"""PSNR of identical frames is infinite; means use this instead."""


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of two images in dB (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-(x**2) / (2 * sigma**2))
    return window / window.sum()


def _filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of an (H, W) image, valid positions only."""
    rows = sliding_window_view(image, len(window), axis=0) @ window
    filtered: np.ndarray = sliding_window_view(rows, len(window), axis=1) @ window
    return filtered


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: np.ndarray | None = None) -> float:
    """Structural similarity of two (H, W) or (H, W, C) images; 1 when equal."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], data_range, window) for c in range(a.shape[2])]))
    window = gaussian_window() if window is None else window
    if min(a.shape) < len(window):
        raise ValueError(f"images of {a.shape} are smaller than the {len(window)}-pixel window")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter(a, window), _filter(b, window)
    var_a = _filter(a * a, window) - mu_a**2
    var_b = _filter(b * b, window) - mu_b**2
    cov = _filter(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def video_quality(video: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-frame PSNR and SSIM of a (frames, H, W, 3) video in [0, 1] against a reference, averaged."""
    if video.shape != reference.shape:
        raise ValueError(f"shapes differ: {video.shape} vs {reference.shape}")
    psnrs = [min(psnr(f, r), PSNR_CAP_DB) for f, r in zip(video, reference, strict=True)]
    ssims = [ssim(f, r) for f, r in zip(video, reference, strict=True)]
    return {
        "psnr_db": float(np.mean(psnrs)),
        "psnr_min_db": float(np.min(psnrs)),
        "ssim": float(np.mean(ssims)),
        "ssim_min": float(np.min(ssims)),
    }


# -- plot -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    title: str
    x_label: str
    y_label: str
    points: Sequence[tuple[str, float, float]]
    """(label, x, y)."""
    lines: Sequence[tuple[str, float]] = ()
    """Horizontal reference lines, (label, y)."""


_COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#000000", "#bcbd22", "#7f7f7f", "#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5",
)  # fmt: skip


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def scatter_svg(panels: Sequence[Panel], title: str, width: int = 460, height: int = 360) -> str:
    """Side-by-side scatter panels as one SVG document; a point's colour is the same in every panel."""
    labels: list[str] = []
    for panel in panels:
        labels += [label for label, _, _ in panel.points if label not in labels]
    colour = {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(labels)}
    legend_height = 18 * len(labels) + 10
    total_w, total_h = width * len(panels), height + 30 + legend_height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
        f'<text x="{total_w / 2}" y="20" text-anchor="middle" font-size="15">{html.escape(title)}</text>',
    ]
    for index, panel in enumerate(panels):
        out += _panel(panel, colour, x0=index * width, y0=30, width=width, height=height)
    for i, label in enumerate(labels):
        y = 30 + height + 14 + 18 * i
        out.append(f'<circle cx="70" cy="{y - 4}" r="5" fill="{colour[label]}"/>')
        out.append(f'<text x="82" y="{y}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _panel(panel: Panel, colour: dict[str, str], x0: float, y0: float, width: int, height: int) -> list[str]:
    left, right, top, bottom = x0 + 62, x0 + width - 18, y0 + 24, y0 + height - 44
    xs = [x for _, x, _ in panel.points]
    ys = [y for _, _, y in panel.points] + [y for _, y in panel.lines]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(ys), max(ys))

    def px(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top)

    out = [
        f'<text x="{(left + right) / 2}" y="{y0 + 14}" text-anchor="middle" font-size="13">'
        f"{html.escape(panel.title)}</text>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#444"/>',
    ]
    for tick in x_ticks:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>')
    for tick in y_ticks:
        y = py(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(
        f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle">'
        f"{html.escape(panel.x_label)}</text>"
    )
    out.append(
        f'<text x="{x0 + 16}" y="{(top + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 + 16} {(top + bottom) / 2})">{html.escape(panel.y_label)}</text>'
    )
    for label, y in panel.lines:
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{right}" y2="{py(y):.1f}" stroke="#555" '
                   'stroke-dasharray="6 4"/>')  # fmt: skip
        out.append(f'<text x="{right - 4}" y="{py(y) - 5:.1f}" text-anchor="end" fill="#555">'
                   f"{html.escape(label)} ({y:.3g})</text>")  # fmt: skip
    for label, x, y in panel.points:
        out.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{colour[label]}" stroke="black" '
            f'stroke-width="0.5"><title>{html.escape(label)}: {x:.3g}, {y:.4g}</title></circle>'
        )
    return out
