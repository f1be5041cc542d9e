"""The shapes recipe's edge loss asks for steps where pixel L1 accepts ramps (its decoder-only phase is
trained in tests/integration/test_shapes_model_runs.py)."""

from __future__ import annotations

import torch

from shapes_model import train_vae


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
