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
  cached delta is added; each branch for itself, or (``branches="together"``) the conditional branch for
  both, as EasyCache does.

- a step-level config (:data:`~service.core.cache.StepCacheConfig`): every block of a step is skipped at
  once. MagCache decides in this hook from the step and the calibrated ratios; TeaCache in block 0's hook,
  from the timestep embedding the condition embedder just made (a hook keeps it); both are functions of the
  step alone, so every rank and both branches decide alike. EasyCache skips the whole transformer (its
  output is the input plus the last computed output-minus-input), decided here by the conditional branch
  for both branches of the step: the unconditional forward of a step follows it (in one process), or
  hears it from the conditional rank (CFG parallel: a broadcast over the CFG group, every step).

A step is one transformer forward of one branch: each ``transformer.cache_context(name)`` (``"cond"``,
``"uncond"``) keeps its own step counter, delta and residual. That state is dropped by
:func:`reset_block_cache`, by ``transformer._reset_stateful_cache()`` and by :func:`set_block_cache`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from service.core.cache import (
    AdaptiveCacheConfig,
    CacheConfig,
    EasyCacheConfig,
    MagCacheConfig,
    TeaCacheConfig,
)
from service.core.cache_calibration import Calibration, TeaFit
from worker.cache.adaptive import relative_change
from worker.cache.stepcache import (
    EasyState,
    MagState,
    TeaState,
    easycache_computed,
    easycache_wants_skip,
    magcache_wants_skip,
    teacache_wants_skip,
)

_STEP_HOOK = "block_cache_step_hook"
_BLOCK_HOOK = "block_cache_block_hook"
_EMBEDDER_HOOK = "block_cache_embedder_hook"
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
    mag_ratios: tuple[float, ...] = ()
    """MagCache: the calibrated ratio of each step (the conditional branch's curve serves both)."""
    tea_fit: TeaFit | None = None
    """TeaCache: the model's polynomial."""

    @property
    def adaptive(self) -> AdaptiveCacheConfig | None:
        return self.config if isinstance(self.config, AdaptiveCacheConfig) else None


@dataclass
class _Shared:
    """What the transformer's hook and the block hooks share."""

    num_blocks: int
    group: Any | None
    cfg_group: Any | None = None
    """The CFG-parallel pair (conditional rank first); None when one process runs both branches."""
    plan: _Plan | None = None
    stats: dict[str, int] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    timestep_proj: torch.Tensor | None = None
    """The condition embedder's timestep embedding of the forward under way (TeaCache's signal)."""
    decisions: dict[int, bool] = field(default_factory=dict)
    """EasyCache: each step's decision, taken by the conditional branch (in one process)."""

    def agree(self, step: int, skip: bool, decides: bool) -> bool:
        """The conditional branch's decision for this step, on every branch: kept for the unconditional
        forward that follows in this process, or broadcast from the conditional rank of a CFG pair (every
        rank of the pair calls this at every step)."""
        if self.cfg_group is not None:
            flag = torch.tensor([int(skip)], dtype=torch.int32)
            dist.broadcast(flag, group_src=0, group=self.cfg_group)
            return bool(flag.item())
        if decides:
            self.decisions[step] = skip
            return skip
        return self.decisions.get(step, False)

    def clear(self) -> None:
        self.stats = {
            "blocks_computed": 0,
            "blocks_skipped": 0,
            "passes": 0,
            "passes_skipped": 0,
            "cond_steps_skipped": 0,
            "uncond_steps_skipped": 0,
        }
        self.trace = []
        self.decisions = {}


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
        self.fresh = True
        self.mag = MagState()
        self.tea = TeaState()
        self.easy = EasyState()
        self.output_delta: torch.Tensor | None = None  # EasyCache: the whole model's output minus input


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
        state.change = None
        if isinstance(config, EasyCacheConfig):
            return self._whole_model(module, state, plan, config, args, kwargs)
        state.fresh = fresh
        if isinstance(config, AdaptiveCacheConfig):
            forced = fresh or config.forces_compute(state.step, plan.num_steps, state.consecutive_skips)
            state.skip, state.pending = False, not forced
        elif isinstance(config, MagCacheConfig):
            wants = magcache_wants_skip(config, plan.mag_ratios, state.step, plan.num_steps, state.mag)
            state.skip = wants and not fresh
            if not state.skip:
                state.mag.computed()
        elif isinstance(config, TeaCacheConfig):
            state.skip, state.pending = False, True  # decided in block 0, from this forward's embedding
        else:
            state.skip = not fresh and not config.is_compute_step(state.step)
        state.latent_shape = shape
        try:
            output = _call_wrapped(self, *args, **kwargs)
            skipped = state.skip
        finally:
            state.skip = state.pending = False
        self._count(state, skipped, plan)
        return output

    def _whole_model(
        self,
        module: torch.nn.Module,
        state: _BranchState,
        plan: _Plan,
        config: EasyCacheConfig,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """EasyCache: skip the whole transformer, or run it and keep what the next skip needs."""
        latents = _hidden_states(args, kwargs)
        ready = state.output_delta is not None and state.output_delta.shape == latents.shape
        decides = self.state_manager.context.name != "uncond"
        skip = False
        if decides:
            wants, estimate = easycache_wants_skip(config, state.step, plan.num_steps, latents, state.easy)
            state.change = None if estimate is None else (estimate, estimate)  # the same on every rank
            skip = wants and ready
            if not skip:
                state.easy.error = 0.0
        skip = self.shared.agree(state.step, skip, decides) and ready
        if skip:
            assert state.output_delta is not None
            output = latents + state.output_delta
            self._count(state, True, plan)
            if kwargs.get("return_dict", True):
                return Transformer2DModelOutput(sample=output)
            return (output,)
        result = _call_wrapped(self, *args, **kwargs)
        output = result.sample if isinstance(result, Transformer2DModelOutput) else result[0]
        if decides:
            easycache_computed(state.easy, latents, output)
        state.output_delta = output - latents
        self._count(state, False, plan)
        return result

    def _count(self, state: _BranchState, skipped: bool, plan: _Plan) -> None:
        stats = self.shared.stats
        skipped_blocks = plan.block_end - plan.block_start if skipped else 0
        stats["passes"] += 1
        stats["passes_skipped"] += int(skipped)
        stats["blocks_skipped"] += skipped_blocks
        stats["blocks_computed"] += self.shared.num_blocks - skipped_blocks
        branch = self.state_manager.context.name
        if skipped and f"{branch}_steps_skipped" in stats:
            stats[f"{branch}_steps_skipped"] += 1
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
        if index == plan.block_start and state.pending and isinstance(plan.config, TeaCacheConfig):
            self._teacache_decides(state, plan, plan.config)
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

    def _teacache_decides(self, state: _BranchState, plan: _Plan, config: TeaCacheConfig) -> None:
        signal = self.shared.timestep_proj
        assert signal is not None and plan.tea_fit is not None, "TeaCache needs the condition embedder"
        fit, step = plan.tea_fit, state.step
        wants, change = teacache_wants_skip(config, fit, step, plan.num_steps, signal, state.tea)
        state.change = None if change is None else (change, change)  # the same on every rank
        state.skip, state.pending = wants and not state.fresh, False
        if not state.skip:
            state.tea.accumulated = 0.0

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
        if config.branches == "together":
            decides = self.state_manager.context.name != "uncond"
            state.skip = self.shared.agree(state.step, state.skip, decides) and not state.fresh
        if not state.skip:
            # Compared against the residual of the last compute step, so small changes accumulate.
            state.probe_residual = residual
        return output


class _EmbedderHook(ModelHook):
    """On the condition embedder: keeps the timestep embedding it makes (TeaCache's signal)."""

    def __init__(self, shared: _Shared) -> None:
        super().__init__()
        self.shared = shared

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = _call_wrapped(self, *args, **kwargs)
        plan = self.shared.plan
        # (temb, timestep_proj, text, image): timestep_proj modulates every block.
        self.shared.timestep_proj = output[1] if plan and isinstance(plan.config, TeaCacheConfig) else None
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


def install_block_cache(
    transformer: torch.nn.Module, *, process_group: Any | None = None, cfg_group: Any | None = None
) -> None:
    """Install the (disabled) block cache hooks on a Wan transformer.

    Call every forward inside ``transformer.cache_context(name)`` once a config is set.

    Args:
        transformer: A ``WanTransformer3DModel`` (anything with a ``blocks`` ModuleList of blocks
            called as ``block(hidden_states, ...)`` and returning the new hidden states).
        process_group: The Ulysses group whose ranks hold shards of one sequence; the adaptive
            decision is all-reduced over it. None in one process.
        cfg_group: The CFG-parallel pair, conditional rank first (EasyCache's decision is broadcast
            over it). None when one process runs both branches.

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
    shared = _Shared(num_blocks=len(blocks), group=process_group, cfg_group=cfg_group)
    shared.clear()
    registry.register_hook(_StepHook(state_manager, shared), _STEP_HOOK)
    embedder = getattr(transformer, "condition_embedder", None)
    if isinstance(embedder, torch.nn.Module):
        HookRegistry.check_if_exists_or_initialize(embedder).register_hook(
            _EmbedderHook(shared), _EMBEDDER_HOOK
        )
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
    calibration: Calibration | None = None,
    clear_stats: bool = True,
) -> None:
    """Switch the installed cache to ``config`` (None: off, bit-exact) for the next request.

    Drops every branch's state and, unless ``clear_stats`` is False (switching off after a request
    whose stats are still to be read), starts the stats and trace afresh.

    Args:
        transformer: A transformer with :func:`install_block_cache` hooks.
        config: A DiTCache schedule, an adaptive config (its block range fitting the transformer), or None.
        num_steps: Denoising steps of the request; the adaptive cache computes the last ``final_steps``,
            the step-level caches size their leading steps and MagCache its curve to them.
        calibration: The model's calibration (MagCache's curves, TeaCache's polynomial).

    Raises:
        ValueError: If the cache is not installed, or MagCache or TeaCache lack the model's calibration.
    """
    hook = _step_hook(transformer)
    plan = None
    if config is not None:
        num_blocks = hook.shared.num_blocks
        start, end = config.block_range(num_blocks)
        assert 0 <= start < end <= num_blocks, f"{config} does not fit {num_blocks} blocks"
        plan = _Plan(config=config, block_start=start, block_end=end, num_steps=num_steps)
        if isinstance(config, MagCacheConfig):
            ratios = calibration.mag_ratios(num_steps or 0) if calibration is not None else None
            if ratios is None:
                raise ValueError("MagCache needs the model's calibration (wanserve cache-calibrate)")
            plan = replace(plan, mag_ratios=tuple(ratios))
        if isinstance(config, TeaCacheConfig):
            if calibration is None or calibration.teacache is None:
                raise ValueError("TeaCache needs the model's calibration (wanserve cache-calibrate)")
            plan = replace(plan, tea_fit=calibration.teacache)
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
        ``{"blocks_computed", "blocks_skipped", "passes", "passes_skipped", "cond_steps_skipped",
        "uncond_steps_skipped"}``.
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
    registry.remove_hook(_EMBEDDER_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()
