"""The numpy PSNR / SSIM and the SVG plot of bench/cache_quality.py."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from bench.cache_metrics import (
    PSNR_CAP_DB,
    Panel,
    gaussian_window,
    nice_ticks,
    psnr,
    scatter_svg,
    ssim,
    video_quality,
)


def naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM window by window, straight from the definition (Wang et al. 2004)."""
    window = np.outer(gaussian_window(), gaussian_window())
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
            var_a = (window * (pa - mu_a) ** 2).sum()
            var_b = (window * (pb - mu_b) ** 2).sum()
            cov = (window * (pa - mu_a) * (pb - mu_b)).sum()
            values.append(
                ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            )
    return float(np.mean(values))


def test_ssim_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(naive_ssim(a, b), rel=1e-9)


def test_ssim_bounds_symmetry_and_constants() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((32, 32, 3))
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = [np.clip(a + s * rng.standard_normal(a.shape), 0, 1) for s in (0.02, 0.1, 0.3)]
    scores = [ssim(a, n) for n in noisy]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.9
    assert ssim(a, noisy[0]) == pytest.approx(ssim(noisy[0], a))
    # Flat images: only the luminance term is left.
    flat_a, flat_b = np.full((16, 16), 0.2), np.full((16, 16), 0.6)
    expected = (2 * 0.2 * 0.6 + 0.01**2) / (0.2**2 + 0.6**2 + 0.01**2)
    assert ssim(flat_a, flat_b) == pytest.approx(expected)
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_psnr_and_video_quality() -> None:
    a = np.zeros((4, 16, 16, 3))
    b = a + 0.1
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf
    quality = video_quality(b.astype(np.float32), a.astype(np.float32))
    assert quality["psnr_db"] == pytest.approx(20.0, rel=1e-5)
    assert video_quality(a, a)["psnr_db"] == PSNR_CAP_DB
    assert video_quality(a, a)["ssim"] == pytest.approx(1.0)


def test_ticks_cover_the_range() -> None:
    assert nice_ticks(1.0, 2.0) == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    ticks = nice_ticks(13.7, 41.2)
    assert ticks[0] <= 13.7 and ticks[-1] >= 41.2
    assert nice_ticks(3.0, 3.0)[0] <= 3.0


def test_svg_is_well_formed_and_labels_every_point() -> None:
    points = [("uncached", 1.0, 100.0), ("DiTCache <fast>", 1.4, 31.5), ("adaptive", 2.0, 24.0)]
    floor = [("floor", 20.0)]
    svg = scatter_svg(
        [Panel("PSNR", "speed-up", "dB", points, floor), Panel("SSIM", "speed-up", "", points)], "t"
    )
    root = ET.fromstring(svg)
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 2 * len(points) + len(points)  # two panels and the legend
    assert "DiTCache &lt;fast&gt;" in svg
    assert svg.count("stroke-dasharray") == 1 and "floor (20)" in svg
