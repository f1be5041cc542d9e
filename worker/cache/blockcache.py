"""Block caches installed once on a Wan transformer and switched per request.

One diffusers hook on the transformer and one on every block, registered once at load, *before*
``enable_parallelism``: the context-parallel hooks registered after them wrap outside, so the block hooks
see the rank's sequence shard (hooks cannot be added inside the split afterwards). What the hooks do is
chosen per request with :func:`set_block_cache`:

- ``None``: every hook calls the wrapped forward with its arguments unchanged, touching no state: the
  output is bit-exact with an unhooked transformer.
- a static schedule (:class:`~service.core.cache.DiTCacheConfig`): DiTCache. On a skip step blocks
  ``[block_start, block_end)`` do not run; the hidden states entering ``block_start`` plus the delta
  ``out(block_end - 1) - in(block_start)`` kept on the branch's last compute step stand in for the output
  of ``block_end - 1``. The schedule depends only on the step, so every rank skips the same blocks.
- :class:`~service.core.cache.AdaptiveCacheConfig`: block 0 always runs and decides, from how much
  its residual changed (all-reduced over the Ulysses group), whether blocks ``[1, N)`` run or their
  cached delta is added.

A step is one transformer forward of one branch: each ``transformer.cache_context(name)`` (``"cond"``,
``"uncond"``) keeps its own step counter, delta and residual. That state is dropped by
:func:`reset_block_cache`, by ``transformer._reset_stateful_cache()`` and by :func:`set_block_cache`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE
from diffusers.hooks.hooks import BaseState, StateManager

from service.core.cache import AdaptiveCacheConfig, CacheConfig
from worker.cache.adaptive import relative_change

_STEP_HOOK = "block_cache_step_hook"
_BLOCK_HOOK = "block_cache_block_hook"
_CP_INPUT_HOOK_PREFIX = _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE.format("")
# The trace is per request (set_block_cache clears it); a cap keeps an API user who never clears it bounded.
_MAX_TRACE = 10_000


@dataclass(frozen=True)
class _Plan:
    """The active config, with the block range it caches."""

    config: CacheConfig
    block_start: int
    block_end: int
    num_steps: int | None

    @property
    def adaptive(self) -> AdaptiveCacheConfig | None:
        return self.config if isinstance(self.config, AdaptiveCacheConfig) else None


@dataclass
class _Shared:
    """What the transformer's hook and the block hooks share."""

    num_blocks: int
    group: Any | None
    plan: _Plan | None = None
    stats: dict[str, int] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)

    def clear(self) -> None:
        self.stats = {"blocks_computed": 0, "blocks_skipped": 0, "passes": 0, "passes_skipped": 0}
        self.trace = []


class _BranchState(BaseState):
    """One cache context's (branch's) progress."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.step = 0
        self.skip = False
        self.pending = False  # the adaptive decision is taken in block 0, during the forward
        self.change: tuple[float, float] | None = None
        self.consecutive_skips = 0
        self.latent_shape: tuple[int, ...] | None = None
        self.block_input: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.probe_residual: torch.Tensor | None = None


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    assert isinstance(hidden_states, torch.Tensor)
    return hidden_states


def _call_wrapped(hook: ModelHook, *args: Any, **kwargs: Any) -> Any:
    """Call the forward that ``hook.new_forward`` wraps (diffusers types it as ``None``)."""
    return cast(Callable[..., Any], hook.fn_ref.original_forward)(*args, **kwargs)


class _StepHook(ModelHook):
    """On the transformer: decides per forward whether the branch's block range runs, then counts."""

    # diffusers hands the cache context to, and resets, only StateManagers held by stateful hooks;
    # the block hooks share this hook's manager, so this one flag serves all of them.
    _is_stateful = True

    def __init__(self, state_manager: StateManager, shared: _Shared) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.shared = shared

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        shared, plan = self.shared, self.shared.plan
        if plan is None:
            shared.stats["passes"] += 1
            shared.stats["blocks_computed"] += shared.num_blocks
            return _call_wrapped(self, *args, **kwargs)
        state: _BranchState = self.state_manager.get_state()
        shape = tuple(_hidden_states(args, kwargs).shape)
        # Without a delta of the same shape (the first steps, or a request that changed resolution
        # without a reset) a skip would be wrong or would silently broadcast, so compute instead.
        fresh = state.delta is None or state.latent_shape != shape
        if fresh:
            state.probe_residual = None
        config = plan.config
        if isinstance(config, AdaptiveCacheConfig):
            forced = fresh or config.forces_compute(state.step, plan.num_steps, state.consecutive_skips)
            state.skip, state.pending = False, not forced
        else:
            state.skip = not fresh and not config.is_compute_step(state.step)
        state.change = None
        state.latent_shape = shape
        try:
            output = _call_wrapped(self, *args, **kwargs)
            skipped = state.skip
        finally:
            state.skip = state.pending = False
        self._count(state, skipped, plan)
        return output

    def _count(self, state: _BranchState, skipped: bool, plan: _Plan) -> None:
        stats = self.shared.stats
        skipped_blocks = plan.block_end - plan.block_start if skipped else 0
        stats["passes"] += 1
        stats["passes_skipped"] += int(skipped)
        stats["blocks_skipped"] += skipped_blocks
        stats["blocks_computed"] += self.shared.num_blocks - skipped_blocks
        branch = self.state_manager.context.name
        entry: dict[str, Any] = {"branch": branch, "step": state.step, "skipped": skipped}
        if state.change is not None:
            entry["change"], entry["local_change"] = state.change
        if len(self.shared.trace) < _MAX_TRACE:
            self.shared.trace.append(entry)
        state.consecutive_skips = state.consecutive_skips + 1 if skipped else 0
        state.step += 1

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class _BlockHook(ModelHook):
    """On every block: pass through, probe (adaptive, block 0), or run / stand in for the cached range."""

    def __init__(self, state_manager: StateManager, shared: _Shared, index: int) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.shared = shared
        self.index = index

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.shared.plan
        if plan is None:
            return _call_wrapped(self, *args, **kwargs)
        index = self.index
        if plan.adaptive is not None and index == 0:
            return self._probe(plan.adaptive, *args, **kwargs)
        if not plan.block_start <= index < plan.block_end:
            return _call_wrapped(self, *args, **kwargs)
        state: _BranchState = self.state_manager.get_state()
        hidden_states = _hidden_states(args, kwargs)
        if state.skip:
            if index != plan.block_start:
                return hidden_states
            assert state.delta is not None
            return hidden_states + state.delta
        if index == plan.block_start:
            state.block_input = hidden_states
        output = _call_wrapped(self, *args, **kwargs)
        if index == plan.block_end - 1:
            assert state.block_input is not None
            state.delta = output - state.block_input
            state.block_input = None
        return output

    def _probe(self, config: AdaptiveCacheConfig, *args: Any, **kwargs: Any) -> Any:
        state: _BranchState = self.state_manager.get_state()
        hidden_states = _hidden_states(args, kwargs)
        output = _call_wrapped(self, *args, **kwargs)
        residual = output - hidden_states
        if state.pending:
            assert state.probe_residual is not None
            state.change = relative_change(residual, state.probe_residual, self.shared.group)
            state.skip = state.change[0] < config.threshold
            state.pending = False
        if not state.skip:
            # Compared against the residual of the last compute step, so small changes accumulate.
            state.probe_residual = residual
        return output


def _blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"{type(transformer).__name__} has no `blocks` ModuleList to cache")
    return blocks


def _step_hook(transformer: torch.nn.Module) -> _StepHook:
    hook = HookRegistry.check_if_exists_or_initialize(transformer).get_hook(_STEP_HOOK)
    if not isinstance(hook, _StepHook):
        raise ValueError(f"the block cache is not installed on this {type(transformer).__name__}")
    return hook


def has_block_cache(transformer: torch.nn.Module) -> bool:
    """Whether :func:`install_block_cache` hooks are on ``transformer``."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry is not None and isinstance(registry.get_hook(_STEP_HOOK), _StepHook)


def install_block_cache(transformer: torch.nn.Module, *, process_group: Any | None = None) -> None:
    """Install the (disabled) block cache hooks on a Wan transformer.

    Call every forward inside ``transformer.cache_context(name)`` once a config is set.

    Args:
        transformer: A ``WanTransformer3DModel`` (anything with a ``blocks`` ModuleList of blocks
            called as ``block(hidden_states, ...)`` and returning the new hidden states).
        process_group: The Ulysses group whose ranks hold shards of one sequence; the adaptive
            decision is all-reduced over it. None in one process.

    Raises:
        ValueError: If the block cache or a diffusers cache is already on the transformer, or context
            parallelism already hooks its blocks (the cache must be installed first).
    """
    blocks = _blocks(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_STEP_HOOK) is not None:
        raise ValueError("the block cache is already installed (DiTCache is already applied)")
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError("a diffusers cache is already enabled on this transformer; disable_cache() first")
    for block in blocks:
        hooks = getattr(block, "_diffusers_hook", None)
        if hooks is not None and any(name.startswith(_CP_INPUT_HOOK_PREFIX) for name in hooks.hooks):
            raise ValueError(
                "install the cache before enable_parallelism: its hooks must wrap inside the split"
            )

    state_manager = StateManager(_BranchState)  # type: ignore[arg-type]  # diffusers annotates an instance
    shared = _Shared(num_blocks=len(blocks), group=process_group)
    shared.clear()
    registry.register_hook(_StepHook(state_manager, shared), _STEP_HOOK)
    for index, block in enumerate(blocks):
        hook = _BlockHook(state_manager, shared, index)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    # cache_context() walks a cached list of child registries; new block hooks make it stale.
    registry.invalidate_child_registries_cache()


def set_block_cache(
    transformer: torch.nn.Module,
    config: CacheConfig | None,
    *,
    num_steps: int | None = None,
    clear_stats: bool = True,
) -> None:
    """Switch the installed cache to ``config`` (None: off, bit-exact) for the next request.

    Drops every branch's state and, unless ``clear_stats`` is False (switching off after a request
    whose stats are still to be read), starts the stats and trace afresh.

    Args:
        transformer: A transformer with :func:`install_block_cache` hooks.
        config: A DiTCache schedule, an adaptive config (its block range fitting the transformer), or None.
        num_steps: Denoising steps of the request; the adaptive cache computes the last ``final_steps``.

    Raises:
        ValueError: If the cache is not installed.
    """
    hook = _step_hook(transformer)
    plan = None
    if config is not None:
        num_blocks = hook.shared.num_blocks
        start, end = config.block_range(num_blocks)
        assert 0 <= start < end <= num_blocks, f"{config} does not fit {num_blocks} blocks"
        plan = _Plan(config=config, block_start=start, block_end=end, num_steps=num_steps)
    hook.reset_state(transformer)
    hook.shared.plan = plan
    if clear_stats:
        hook.shared.clear()


def reset_block_cache(transformer: torch.nn.Module) -> None:
    """Forget every branch's step counter, delta and residual (stats and trace are kept).

    Raises:
        ValueError: If the cache is not installed.
    """
    _step_hook(transformer).reset_state(transformer)


def block_cache_stats(transformer: torch.nn.Module) -> dict[str, int]:
    """Transformer passes and block evaluations since the last :func:`set_block_cache`, all branches.

    Returns:
        ``{"blocks_computed", "blocks_skipped", "passes", "passes_skipped"}``.
    """
    return dict(_step_hook(transformer).shared.stats)


def block_cache_trace(transformer: torch.nn.Module) -> list[dict[str, Any]]:
    """Every pass since the last :func:`set_block_cache`: branch, step, skipped, and for adaptive
    decisions the relative change compared (``change``, whole sequence) and this rank's share of it
    (``local_change``)."""
    return [dict(entry) for entry in _step_hook(transformer).shared.trace]


def remove_block_cache(transformer: torch.nn.Module) -> None:
    """Remove the hooks (and their state and stats).

    Raises:
        ValueError: If the cache is not installed.
    """
    _step_hook(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(_STEP_HOOK, recurse=False)
    registry.remove_hook(_BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()
