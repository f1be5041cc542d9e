"""The shapes recipe's losses: the VAE's edge loss asks for steps where pixel L1 accepts ramps, the
transformer's outline weight lies where a shape differs from its twin, and its last cycle draws and weighs
what it asks (the phases themselves run in tests/integration/test_shapes_model_runs.py)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shapes_model import recipe, train_dit, train_vae
from shapes_model.analyse import analyse_each_frame
from shapes_model.data import BACKGROUND, LARGE_SQUARE_RADII, Clip, sample_clip
from shapes_model.outline_weights import outline_difference


def clip_with_an_edge(ramp: int) -> torch.Tensor:
    """(1, 3, 1, 8, 16): dark on the left, bright on the right, the edge ramping over ``ramp`` pixels."""
    row = torch.cat(
        [torch.full((6,), -1.0), torch.linspace(-1.0, 1.0, ramp + 2), torch.full((8 - ramp,), 1.0)]
    )
    return row.view(1, 1, 1, 1, 16).expand(1, 3, 1, 8, 16).clone()


def test_the_edge_loss_tells_a_ramp_from_a_step_and_ignores_levels() -> None:
    step, ramp = clip_with_an_edge(0), clip_with_an_edge(4)
    weight = torch.ones_like(step[:, :1])
    assert train_vae.edge_loss(step, step, weight) == 0
    assert train_vae.edge_loss(ramp, step, weight) > 0
    # A level shift changes no difference between neighbours: that is pixel L1's business, not this loss's.
    assert train_vae.edge_loss(step + 0.3, step, weight) < 1e-6


def test_the_edge_loss_is_weighted_where_the_weight_is() -> None:
    step, ramp = clip_with_an_edge(0), clip_with_an_edge(4)
    weight = torch.ones_like(step[:, :1])
    away = weight.clone()
    away[..., 4:12] = 0.0  # nothing counts around the edge (columns 6-11)
    assert train_vae.edge_loss(ramp, step, away) == 0
    assert train_vae.edge_loss(ramp, step, weight * 10) > train_vae.edge_loss(ramp, step, weight)


def test_a_squares_outline_weight_lies_on_its_corners_not_its_middle_or_the_background() -> None:
    square = Clip("red", "square", "right", radius=10.0, travel=0.0, start=(0.5, 0.5))
    cells = outline_difference(square, 17, (5, 8, 8))[0]
    assert cells.shape == (5, 8, 8) and cells.max() == 1
    # Centred at pixel 32: the four latent cells around the centre hold the corners (the circle reaches
    # almost as far along the axes), the rest of the frame is the same for both shapes.
    assert (cells[:, 3:5, 3:5] > 0).all()
    assert (cells[:, :2] == 0).all() and (cells[:, 6:] == 0).all()
    # A circle is told apart from the same square, so it is weighed in the same cells.
    circle = dataclasses.replace(square, shape="circle")
    assert torch.equal(outline_difference(circle, 17, (5, 8, 8)), outline_difference(square, 17, (5, 8, 8)))


def test_the_outline_weight_follows_a_moving_clip_chunk_by_chunk() -> None:
    moving = Clip("blue", "square", "right", radius=8.0, travel=0.5, start=(0.25, 0.5))
    cells = outline_difference(moving, 17, (5, 8, 8))[0]
    columns = cells.sum(dim=1)  # (latent frames, columns)
    centres = (columns * torch.arange(8)).sum(dim=1) / columns.sum(dim=1)
    assert (centres.diff() > 0).all(), centres


def test_the_weighted_loss_counts_only_where_the_weight_is() -> None:
    target = torch.zeros(1, 16, 5, 8, 8)
    prediction = target.clone()
    prediction[..., 0, 0] = 1.0  # wrong in one cell of every latent frame
    weight = torch.ones(1, 1, 5, 8, 8)
    loss = train_dit.weighted_mse
    assert loss(prediction, target, weight) == torch.nn.functional.mse_loss(prediction, target)
    elsewhere = weight.clone()
    elsewhere[..., 0, 0] = 0.0
    assert loss(prediction, target, elsewhere) == 0
    there = weight.clone()
    there[..., 0, 0] = 21.0
    assert loss(prediction, target, there) > loss(prediction, target, weight)


def test_the_first_frame_weight_multiplies_the_first_latent_frame_alone() -> None:
    outline = torch.zeros(2, 1, 5, 8, 8)
    outline[..., 3, 3] = 1.0  # a corner in every latent frame
    phase = dataclasses.replace(train_dit.CORNERS, first_frame_weight=3.0)
    weight = train_dit.loss_weight(phase, outline)
    plain = train_dit.loss_weight(train_dit.CORNERS, outline)
    assert torch.equal(weight[:, :, 0], 3 * plain[:, :, 0])
    assert torch.equal(weight[:, :, 1:], plain[:, :, 1:])
    assert plain[0, 0, 2, 3, 3] == 1 + train_dit.CORNERS.outline_weight and plain[0, 0, 2, 0, 0] == 1


def test_a_phase_with_a_square_share_draws_that_share_of_squares_and_others_alike_otherwise() -> None:
    rng = random.Random(0)
    clips = [sample_clip(rng) for _ in range(300)]
    by_shape = train_dit.clips_by_shape(clips)

    def squares_drawn(phase: train_dit.Phase) -> float:
        draws = random.Random(1)
        rows = [row for _ in range(100) for row in train_dit.draw_rows(draws, by_shape, phase)]
        return np.mean([clips[row].shape == "square" for row in rows])

    share = sum(clip.shape == "square" for clip in clips) / len(clips)
    assert abs(squares_drawn(train_dit.CORNERS) - share) < 0.05
    last = train_dit.LAST_CYCLE
    assert last.square_share is not None and abs(squares_drawn(last) - last.square_share) < 0.05


def test_a_logit_normal_phase_draws_its_levels_around_its_mean() -> None:
    torch.manual_seed(0)
    levels = train_dit.draw_levels(train_dit.CORNERS, 10_000)
    assert levels.min() > 0 and levels.max() < 1
    assert abs(levels.median() - torch.sigmoid(torch.tensor(train_dit.CORNERS.level_logit[0]))) < 0.01

    def middle(draws: torch.Tensor) -> float:
        return ((draws > 0.4) & (draws < 0.8)).float().mean().item()

    uniform = train_dit.draw_levels(train_dit.EVERY_LEVEL, 10_000)
    assert middle(levels) > 0.55 and abs(middle(uniform) - 0.4) < 0.02


def test_a_training_windows_outline_is_cropped_with_its_frames() -> None:
    """The decoder's outline weight must lie on the window's own corners: where a square differs from its
    circle the square's colour is drawn, where a circle differs from its square the background shows."""
    rng = random.Random(3)
    seen = set()
    while seen != {"square", "circle"}:
        state = rng.getstate()
        frames, outline = train_vae.training_window(rng, window=9, crop=32)
        replay = random.Random()
        replay.setstate(state)
        clip = sample_clip(replay)  # the window's clip: its first draw from the same state
        if clip.shape == "triangle":
            continue
        seen.add(clip.shape)
        assert frames.shape[:3] == outline.shape == (9, 32, 32)
        differs = outline > 0.99
        assert differs.any()
        on_background = (np.abs(frames.astype(int) - BACKGROUND).max(axis=-1) == 0)[differs]
        assert on_background.all() if clip.shape == "circle" else not on_background.any()


def test_a_phase_with_a_short_window_alternates_it_with_its_window() -> None:
    phase = dataclasses.replace(train_vae.OUTLINES, window=33, short_window=17)
    assert [train_vae.window_at(phase, step) for step in range(4)] == [33, 17, 33, 17]
    assert {train_vae.window_at(train_vae.OUTLINES, step) for step in range(4)} == {33}
    # A 17-frame window is a whole 17-frame clip: the object crosses its path in half the frames.
    frames, _ = train_vae.training_window(random.Random(0), window=17, crop=64)
    assert frames.shape == (17, 64, 64, 3)


def test_a_window_without_its_outline_is_the_same_window() -> None:
    """Phases that weigh no outline skip computing it, and draw the same clips as before."""
    frames, outline = train_vae.training_window(random.Random(4), window=9, crop=32)
    bare, nothing = train_vae.training_window(random.Random(4), window=9, crop=32, outlined=False)
    assert np.array_equal(frames, bare) and outline.any()
    assert nothing.shape == outline.shape and nothing.dtype == outline.dtype and not nothing.any()


def test_a_phase_draws_its_squares_at_its_own_sizes() -> None:
    """``Phase.square_radii`` reaches the clips drawn: the object's width in each square window."""

    def square_widths(radii: tuple[float, float]) -> list[int]:
        rng, widths = random.Random(5), []
        while len(widths) < 4:
            state = rng.getstate()
            frames, _ = train_vae.training_window(rng, window=5, crop=64, square_radii=radii)
            replay = random.Random()
            replay.setstate(state)
            if sample_clip(replay, square_radii=radii).shape == "square":
                on_object = (np.abs(frames[0].astype(int) - BACKGROUND).max(axis=-1) > 0).any(axis=0)
                widths.append(int(on_object.sum()))
        return widths

    assert all(width <= 16 for width in square_widths((7.0, 7.5)))
    assert all(width >= 21 for width in square_widths((10.5, 11.0)))
    assert train_vae.LAST_CYCLE_CLIPS.square_radii == LARGE_SQUARE_RADII


def test_a_phase_draws_its_share_of_squares() -> None:
    """Read by the evaluation's own analyser from the windows' first frames (drawn clips read true)."""

    def shapes_drawn(share: float | None) -> list[str | None]:
        rng = random.Random(11)
        windows = [train_vae.training_window(rng, 5, 64, square_share=share)[0] for _ in range(12)]
        return [analyse_each_frame(frames[:1])[0].shape for frames in windows]

    assert set(shapes_drawn(1.0)) == {"square"}
    assert set(shapes_drawn(0.0)) == {"circle", "triangle"}
    assert set(shapes_drawn(None)) == {"square", "circle", "triangle"}


def test_the_first_frame_weighs_as_its_phase_says() -> None:
    batch = torch.zeros(2, 3, 5, 8, 8)
    batch[:, :, :, 2:6, 2:6] = 1.0  # an object on a dark background
    outlines = torch.zeros(2, 1, 5, 8, 8)
    outlines[:, :, :, 2, 2] = 1.0
    plain = train_vae.pixel_weight(train_vae.OUTLINES, batch, outlines)
    doubled = train_vae.pixel_weight(
        dataclasses.replace(train_vae.OUTLINES, first_frame_weight=2.0), batch, outlines
    )
    assert torch.equal(doubled[:, :, 0], 2 * plain[:, :, 0])
    assert torch.equal(doubled[:, :, 1:], plain[:, :, 1:])
    assert plain[0, 0, 1, 2, 2] == plain[0, 0, 1, 3, 3] + train_vae.OUTLINES.outline_weight


def test_the_late_vae_phases_run_before_the_last_transformer_phase_only() -> None:
    assert recipe.vae_phases_needed(7, 3, late_vae_phases=1) == [6, 6, 7]
    assert recipe.vae_phases_needed(7, 3, late_vae_phases=0) == [7, 7, 7]


def test_the_vae_phases_after_the_transformer_keep_its_latents(tmp_path: Path) -> None:
    """A phase that trains the encoder after the transformer's last would ship latents it never saw."""
    with pytest.raises(ValueError, match="decoder alone"):
        recipe.run(tmp_path, vae_phases=(train_vae.CROPS, train_vae.WHOLE_VAE_OUTLINES))
    assert all(phase.decoder_only for phase in train_vae.PHASES[-recipe.FINAL_DECODER_PHASES :])
