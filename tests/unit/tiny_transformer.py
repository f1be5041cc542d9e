"""A tiny diffusers WanTransformer3DModel and the calls the block-cache tests make on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from worker.tiny_model import TRANSFORMER_CONFIG

NUM_BLOCKS = 4
BRANCHES = ("cond", "uncond")


def make_transformer() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**{**TRANSFORMER_CONFIG, "num_layers": NUM_BLOCKS}).eval()


def inputs(step: int, branch: str) -> dict[str, torch.Tensor]:
    """Like a denoising loop: latents and timestep change per step, each branch has its own prompt."""
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(step))
    prompt = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(100 + BRANCHES.index(branch)))
    return {
        "hidden_states": latents,
        "timestep": torch.tensor([999.0 - 100 * step]),
        "encoder_hidden_states": prompt,
    }


def forward(model: WanTransformer3DModel, step: int, branch: str = "cond") -> torch.Tensor:
    with model.cache_context(branch):
        output: torch.Tensor = model(**inputs(step, branch), return_dict=False)[0]
    return output


def forward_with_range(
    model: WanTransformer3DModel,
    step: int,
    block_range: tuple[int, int],
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run an unhooked model with plain torch hooks around ``blocks[start:end]``.

    Returns the model output, ``in(start)`` and ``out(end - 1)``; with ``replace``, the output of
    ``blocks[end - 1]`` becomes ``replace(in(start))``.
    """
    start, end = block_range
    seen: dict[str, torch.Tensor] = {}

    def grab_input(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen["in"] = args[0]

    def grab_output(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        seen["out"] = output if replace is None else replace(seen["in"])
        return seen["out"]

    handles = [
        model.blocks[start].register_forward_pre_hook(grab_input),
        model.blocks[end - 1].register_forward_hook(grab_output),
    ]
    try:
        output = forward(model, step)
    finally:
        for handle in handles:
            handle.remove()
    return output, seen["in"], seen["out"]
