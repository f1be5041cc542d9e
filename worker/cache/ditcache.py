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

Its config (:class:`~service.core.cache.DiTCacheConfig`) and presets are the cache contract's,
:mod:`service.core.cache`. The hooks are :mod:`worker.cache.blockcache`'s, which the engine installs once at
load and switches per request (DiTCache, the adaptive cache, or off); :func:`apply_dit_cache` sets them to
one schedule.

Per-request state is dropped by :func:`reset_dit_cache` and by diffusers'
``transformer._reset_stateful_cache()`` (the hook is stateful); ``WanPipeline.__call__`` calls the
latter at its end through ``maybe_free_model_hooks``, but not when a request raises mid-loop.
"""

from __future__ import annotations

import torch

from service.core.cache import DiTCacheConfig
from worker.cache.blockcache import (
    block_cache_stats,
    has_block_cache,
    install_block_cache,
    remove_block_cache,
    reset_block_cache,
    set_block_cache,
)


def apply_dit_cache(transformer: torch.nn.Module, config: DiTCacheConfig) -> None:
    """Install DiTCache hooks on a Wan transformer, with ``config`` as a fixed schedule.

    Call every forward inside ``transformer.cache_context(name)`` (``WanPipeline`` does, with
    ``"cond"`` and ``"uncond"``); each name keeps its own step counter and delta. This is the
    :mod:`worker.cache.blockcache` machinery (which the engine installs once and switches per request)
    set to one schedule for good.

    Args:
        transformer: A ``WanTransformer3DModel`` (anything with a ``blocks`` ModuleList of blocks
            called as ``block(hidden_states, ...)`` and returning the new hidden states).
        config: The schedule; its block range must fit the transformer (requests are checked by
            ``service.core.cache.resolve_cache``).

    Raises:
        ValueError: If DiTCache or a diffusers cache is already enabled, or context parallelism already
            hooks the blocks.
    """
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
