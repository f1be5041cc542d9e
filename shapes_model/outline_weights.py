"""Where a clip's shape differs from another shape drawn alike, on the latent grid: the transformer's loss
weight that makes a square's corners count (issue 15).

A square and the circle drawn at the same place differ only in four corners, a few percent of a clip's
latents, so a plain MSE barely notices a model that draws every square round; weighting those cells is
what made the word "square" change the drawing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from shapes_model.data import Clip, coverage

TWIN = {"square": "circle", "circle": "square", "triangle": "circle"}
"""The shape each is told apart from."""


def pixel_difference(clip: Clip, frames: int) -> np.ndarray:
    """(frames, 64, 64): how much more or less of each pixel ``clip`` covers than its twin drawn alike."""
    twin = dataclasses.replace(clip, shape=TWIN[clip.shape])
    return np.abs(coverage(clip, frames) - coverage(twin, frames))


def outline_difference(clip: Clip, frames: int, latent_shape: Sequence[int]) -> torch.Tensor:
    """(1, T', H', W') for latents of ``latent_shape`` (T', H', W'): the share of each latent cell's pixels
    where ``clip`` and its twin differ, over the clip's largest. A cell covers the frames Wan's causal VAE
    groups (the first alone, then chunks) and a square of pixels."""
    latent_frames, latent_height, latent_width = latent_shape
    difference = pixel_difference(clip, frames)
    chunk = (frames - 1) // (latent_frames - 1)
    groups = [difference[:1]] + [
        difference[1 + chunk * k : 1 + chunk * (k + 1)] for k in range(latent_frames - 1)
    ]
    rows, columns = difference.shape[1] // latent_height, difference.shape[2] // latent_width
    cells = np.stack(
        [group.mean(0).reshape(latent_height, rows, latent_width, columns).mean((1, 3)) for group in groups]
    )
    return torch.from_numpy(cells / max(float(cells.max()), 1e-6)).unsqueeze(0)


def outline_weights(clips: Sequence[Clip], frames: int, latent_shape: Sequence[int]) -> torch.Tensor:
    """(len(clips), 1, T', H', W'): ``outline_difference`` of each clip."""
    return torch.stack([outline_difference(clip, frames, latent_shape) for clip in clips])
