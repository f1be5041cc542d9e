"""DiTCache: a static step/block-range feature cache for diffusers' ``WanTransformer3DModel``.

After Huawei MindIE SD's ``dit_block_cache``: on a *compute* step blocks ``[block_start, block_end)`` run
and the delta ``out(block_end - 1) - in(block_start)`` is kept; on a *skip* step those blocks do not run
and the hidden states entering ``block_start`` plus the kept delta become the output of ``block_end - 1``.

Unlike MindIE, a step is one transformer forward of one branch (the ``"cond"`` / ``"uncond"`` cache
contexts the pipeline opens keep separate counters and deltas), ``step_end`` is honoured, and a
one-block range caches the delta rather than the block's input.

The schedule depends only on the step counter, never on tensor values, so every Ulysses rank skips
the same steps without communicating. Apply the cache *before* ``enable_parallelism``: hooks wrap in
registration order, and the cache must sit inside the context-parallel hook on ``blocks.0`` so that it
sees the rank's shard of the hidden states.

The hooks are :mod:`worker.cache.blockcache`'s, which the engine installs once at load and switches per
request (DiTCache, the adaptive cache, or off); :func:`apply_dit_cache` sets them to one schedule.

Per-request state is dropped by :func:`reset_dit_cache` and by diffusers'
``transformer._reset_stateful_cache()`` (the hook is stateful); ``WanPipeline.__call__`` calls the
latter at its end through ``maybe_free_model_hooks``, but not when a request raises mid-loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from worker.cache.blockcache import (
    block_cache_stats,
    check_block_cache_config,
    has_block_cache,
    install_block_cache,
    remove_block_cache,
    reset_block_cache,
    set_block_cache,
)

# MindIE SD's reference schedule for Wan2.1 at 50 steps / 30 blocks; presets scale it.
_REF_STEPS = 50
_REF_BLOCKS = 30


@dataclass(frozen=True)
class DiTCacheConfig:
    """A static DiTCache schedule.

    Step ``s`` of a branch is a compute step when ``s < step_start``, ``s >= step_end`` or
    ``(s - step_start) % step_interval == 0``; on every other step blocks
    ``[block_start, block_end)`` are replaced by the delta cached on the branch's last compute step.

    Args:
        step_start: First step that may be skipped after (it is itself always computed); >= 0.
        step_end: Steps from here on are always computed; >= ``step_start``.
        step_interval: Within ``[step_start, step_end)`` one step in ``step_interval`` computes; >= 1.
        block_start: First block of the cached range; >= 0.
        block_end: One past the last block of the cached range; > ``block_start`` and at most the
            transformer's number of blocks (checked by :func:`apply_dit_cache`).

    Raises:
        ValueError: If a field is out of range; the message names the field.
    """

    step_start: int
    step_end: int
    step_interval: int
    block_start: int
    block_end: int

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{field.name} must be an int, got {value!r}")
        if self.step_start < 0:
            raise ValueError(f"step_start must be >= 0, got {self.step_start}")
        if self.step_end < self.step_start:
            raise ValueError(f"step_end ({self.step_end}) must be >= step_start ({self.step_start})")
        if self.step_interval < 1:
            raise ValueError(f"step_interval must be >= 1, got {self.step_interval}")
        if self.block_start < 0:
            raise ValueError(f"block_start must be >= 0, got {self.block_start}")
        if self.block_end <= self.block_start:
            raise ValueError(f"block_end ({self.block_end}) must be > block_start ({self.block_start})")

    @property
    def num_cached_blocks(self) -> int:
        """How many blocks a skip step skips."""
        return self.block_end - self.block_start

    def is_compute_step(self, step: int) -> bool:
        """Whether the cached block range runs at ``step`` (0-based, counted per branch)."""
        return (
            step < self.step_start
            or step >= self.step_end
            or (step - self.step_start) % self.step_interval == 0
        )


def _scaled(value: int, reference: int, total: int) -> int:
    """``value * total / reference``, rounded half up."""
    return (value * total + reference // 2) // reference


def _preset(
    step_start: int, step_end: int, step_interval: int, block_start: int
) -> Callable[[int, int], DiTCacheConfig]:
    """A preset from a schedule given at the 50-step / 30-block reference size, cached to the last block."""

    def build(num_steps: int, num_blocks: int) -> DiTCacheConfig:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        # The reference leaves its last steps computed; keep at least the final one at any size.
        end = min(_scaled(step_end, _REF_STEPS, num_steps), num_steps - 1)
        return DiTCacheConfig(
            step_start=min(_scaled(step_start, _REF_STEPS, num_steps), end),
            step_end=end,
            step_interval=step_interval,
            block_start=_scaled(block_start, _REF_BLOCKS, num_blocks),
            block_end=num_blocks,
        )

    return build


DITCACHE_PRESETS: dict[str, Callable[[int, int], DiTCacheConfig]] = {
    # MindIE SD's reference (steps 20-47 of 50, blocks 10-30 of 30, interval 2), scaled: ~17% of
    # block evaluations skipped.
    "balanced": _preset(step_start=20, step_end=47, step_interval=2, block_start=10),
    # Wider in both directions (steps 15-47 of 50, blocks 5-30 of 30) and two of every three steps
    # skipped: ~35% of block evaluations skipped.
    "fast": _preset(step_start=15, step_end=47, step_interval=3, block_start=5),
}
"""Named schedules, each ``(num_inference_steps, num_blocks) -> DiTCacheConfig``.

The reference is stated for 50 steps and 30 blocks (Wan2.1 1.3B); step and block bounds scale
proportionally (rounded), the range always ends at the last block, and the final step always computes.
"""


def dit_cache_preset(name: str, num_steps: int, num_blocks: int) -> DiTCacheConfig:
    """The :data:`DITCACHE_PRESETS` schedule ``name`` sized for ``num_steps`` and ``num_blocks``.

    Args:
        name: A key of :data:`DITCACHE_PRESETS`.
        num_steps: Denoising steps per request (>= 1).
        num_blocks: Transformer blocks (>= 1), e.g. ``len(transformer.blocks)``.

    Returns:
        The scaled config.

    Raises:
        ValueError: If ``name`` is unknown or a size is < 1.
    """
    if name not in DITCACHE_PRESETS:
        raise ValueError(f"unknown DiTCache preset {name!r}; choose from {sorted(DITCACHE_PRESETS)}")
    return DITCACHE_PRESETS[name](num_steps, num_blocks)


def apply_dit_cache(transformer: torch.nn.Module, config: DiTCacheConfig) -> None:
    """Install DiTCache hooks on a Wan transformer, with ``config`` as a fixed schedule.

    Call every forward inside ``transformer.cache_context(name)`` (``WanPipeline`` does, with
    ``"cond"`` and ``"uncond"``); each name keeps its own step counter and delta. This is the
    :mod:`worker.cache.blockcache` machinery (which the engine installs once and switches per request)
    set to one schedule for good.

    Args:
        transformer: A ``WanTransformer3DModel`` (anything with a ``blocks`` ModuleList of blocks
            called as ``block(hidden_states, ...)`` and returning the new hidden states).
        config: The schedule.

    Raises:
        ValueError: If ``config.block_end`` exceeds the number of blocks, DiTCache or a diffusers
            cache is already enabled, or context parallelism already hooks the blocks.
    """
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"{type(transformer).__name__} has no `blocks` ModuleList to cache")
    check_block_cache_config(config, len(blocks))
    install_block_cache(transformer)
    set_block_cache(transformer, config)


def remove_dit_cache(transformer: torch.nn.Module) -> None:
    """Remove DiTCache hooks (and their state and stats), restoring uncached behaviour.

    Raises:
        ValueError: If DiTCache is not applied.
    """
    _check_applied(transformer)
    remove_block_cache(transformer)


def reset_dit_cache(transformer: torch.nn.Module) -> None:
    """Forget every branch's step counter and delta, so the next request starts at step 0.

    Equivalent to what ``transformer._reset_stateful_cache()`` does for DiTCache. Stats are kept.

    Raises:
        ValueError: If DiTCache is not applied.
    """
    _check_applied(transformer)
    reset_block_cache(transformer)


def dit_cache_stats(transformer: torch.nn.Module) -> dict[str, int]:
    """Block evaluations since :func:`apply_dit_cache`, over all branches run on this process.

    Resets do not clear them (the pipeline resets at the end of every call); diff two readings for
    one request's counts.

    Returns:
        ``{"blocks_computed": int, "blocks_skipped": int}``.

    Raises:
        ValueError: If DiTCache is not applied.
    """
    _check_applied(transformer)
    stats = block_cache_stats(transformer)
    return {"blocks_computed": stats["blocks_computed"], "blocks_skipped": stats["blocks_skipped"]}


def _check_applied(transformer: torch.nn.Module) -> None:
    if not has_block_cache(transformer):
        raise ValueError(f"DiTCache is not applied to this {type(transformer).__name__}")
