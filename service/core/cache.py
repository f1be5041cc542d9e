"""The ``cache`` request field: which values are accepted, what they resolve to, and how a video reports it.

The API resolves a request's ``cache`` once, at create (:func:`resolve_cache`), into a :class:`CacheSpec`
that travels in ``GenerationParams`` and the job record (:meth:`CacheSpec.to_json`); the worker's hooks
(``worker/cache``) run its config and never check it again. Torch-free: the API imports it.

Accepted values:

- ``"none"`` (or nothing): no cache.
- a DiTCache preset, ``"balanced"`` or ``"fast"``: a schedule stated for 50 steps and 30 layers, scaled to
  the request's steps and the model's layer count (:func:`dit_cache_preset`).
- ``"adaptive"``: the adaptive cache with its defaults (:class:`AdaptiveCacheConfig`).
- ``"magcache"``, ``"teacache"``, ``"easycache"``: a step-level cache with its defaults (every block of a
  step skipped at once: :class:`MagCacheConfig`, :class:`TeaCacheConfig`, :class:`EasyCacheConfig`).
  MagCache and TeaCache need the model's calibration (``cache_calibration.json``, written by
  ``wanserve cache-calibrate``; Wan2.1 1.3B and 14B ship published data): without it, a 400.
- an object, or its JSON text (a multipart form field): the five :class:`DiTCacheConfig` fields (``method``
  ``"dit"`` optional), ``{"method": "adaptive" | "magcache" | "teacache" | "easycache", ...}`` with any of
  that method's fields, or ``{"method": "none"}``.

Block ranges must fit the model's layer count; a profile without one (registered by an older worker) skips
that check, and its presets are sized by the worker (:meth:`CacheSpec.sized`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from service.core.errors import InvalidRequest

CacheMethod = Literal["none", "dit", "adaptive", "magcache", "teacache", "easycache"]


@dataclass(frozen=True)
class DiTCacheConfig:
    """A static DiTCache schedule.

    Step ``s`` of a branch is a compute step when ``s < step_start``, ``s >= step_end`` or
    ``(s - step_start) % step_interval == 0``; on every other step blocks ``[block_start, block_end)`` are
    replaced by the delta cached on the branch's last compute step.

    Attributes:
        step_start: First step that may be skipped after (it is itself always computed); >= 0.
        step_end: Steps from here on are always computed; >= ``step_start``.
        step_interval: Within ``[step_start, step_end)`` one step in ``step_interval`` computes; >= 1.
        block_start: First block of the cached range; >= 0.
        block_end: One past the last block of the cached range; > ``block_start`` and at most the model's
            layer count.
    """

    step_start: int
    step_end: int
    step_interval: int
    block_start: int
    block_end: int

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

    def block_range(self, num_layers: int) -> tuple[int, int]:
        """The blocks ``[start, end)`` this config caches on a model of ``num_layers`` blocks."""
        return self.block_start, self.block_end

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdaptiveCacheConfig:
    """When the adaptive cache may skip blocks ``[1, N)`` of a branch's forward (block 0 decides).

    Attributes:
        threshold: Skip when the relative L1 change of block 0's residual since the branch's last compute
            step is below this; > 0 and <= :data:`MAX_ADAPTIVE_THRESHOLD`. Larger skips more.
        warmup_steps: The first steps of each branch always compute; >= 0.
        final_steps: The last steps always compute (needs the request's step count); >= 0.
        max_consecutive_skips: After this many skips in a row a branch computes; >= 1.
        branches: ``"separate"``: each CFG branch decides from its own residual; ``"together"``: the
            conditional branch decides for both (a skipped step saves both passes).
    """

    threshold: float = 0.05
    warmup_steps: int = 1
    final_steps: int = 1
    max_consecutive_skips: int = 2
    branches: Literal["separate", "together"] = "separate"

    def forces_compute(self, step: int, num_steps: int | None, consecutive_skips: int) -> bool:
        """Whether ``step`` computes whatever the residual says (warm-up, final steps, too many skips)."""
        final = num_steps is not None and step >= num_steps - self.final_steps
        return step < self.warmup_steps or final or consecutive_skips >= self.max_consecutive_skips

    def block_range(self, num_layers: int) -> tuple[int, int]:
        """The blocks ``[start, end)`` this config caches on a model of ``num_layers`` blocks."""
        return 1, num_layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MagCacheConfig:
    """MagCache (Ma et al., 2025): every block of a step is skipped, and the last computed step's block-stack
    residual added instead, while the error accumulated from the model's calibrated magnitude ratios stays
    small. The schedule follows from the step and the calibration alone: every rank and both CFG branches
    decide alike (the conditional branch's curve serves both).

    Attributes:
        threshold: Skip while the accumulated ``|1 - product of ratios|`` since the last computed step is
            below this; > 0.
        max_skip_steps: At most this many steps in a row are skipped; >= 1.
        retention_ratio: The first ``round(ratio x steps)`` steps always compute; in [0, 1).
    """

    threshold: float = 0.12
    max_skip_steps: int = 2
    retention_ratio: float = 0.2

    def block_range(self, num_layers: int) -> tuple[int, int]:
        return 0, num_layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TeaCacheConfig:
    """TeaCache (Liu et al., 2025): every block of a step is skipped while the accumulated change of the
    timestep embedding, rescaled by the model's fitted polynomial, stays small. The embedding depends on
    the step alone: every rank and both CFG branches decide alike.

    Attributes:
        threshold: Skip while the accumulated rescaled change since the last computed step is below this;
            > 0.
        warmup_ratio: The first ``round(ratio x steps)`` steps always compute; in [0, 1).
    """

    threshold: float = 0.1
    warmup_ratio: float = 0.1

    def block_range(self, num_layers: int) -> tuple[int, int]:
        return 0, num_layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EasyCacheConfig:
    """EasyCache (Zhou et al., 2025; no calibration): the whole transformer is skipped, and its last
    computed output-minus-input added to the input, while the output change estimated from the input's
    change and the transformation rate measured between the last computed steps stays small. The
    conditional branch decides for both branches of a step (under CFG parallel, its rank tells the other).

    Attributes:
        threshold: Skip while the accumulated estimate of the output's relative change is below this; > 0.
        warmup_ratio: The first ``round(ratio x steps)`` steps always compute (and the last step); in [0, 1).
    """

    threshold: float = 0.07
    """The paper's code uses 0.05; on our model 0.07 is x2.2 at 38 dB at 50 steps (docs/BENCHMARKS.md)."""
    warmup_ratio: float = 0.2

    def block_range(self, num_layers: int) -> tuple[int, int]:
        return 0, num_layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


StepCacheConfig = MagCacheConfig | TeaCacheConfig | EasyCacheConfig
"""The caches that skip every block of a step at once, decided once per step for both CFG branches."""
CacheConfig = DiTCacheConfig | AdaptiveCacheConfig | StepCacheConfig
STEP_CACHES: dict[str, type[StepCacheConfig]] = {
    "magcache": MagCacheConfig,
    "teacache": TeaCacheConfig,
    "easycache": EasyCacheConfig,
}
CALIBRATED = ("magcache", "teacache")
"""The methods that need the model's calibration."""
MAX_STEP_THRESHOLD = 10.0

MAX_ADAPTIVE_THRESHOLD = 10.0
_MAX_CACHE_INT = 10_000
_DIT_FIELDS = tuple(field.name for field in fields(DiTCacheConfig))
_ADAPTIVE_FIELDS = tuple(field.name for field in fields(AdaptiveCacheConfig))

# The presets' reference size: Wan2.1 1.3B at its default steps.
_REF_STEPS = 50
_REF_LAYERS = 30

DIT_CACHE_PRESETS: dict[str, DiTCacheConfig] = {
    # MindIE SD's reference schedule for Wan2.1: ~17% of block evaluations skipped.
    "balanced": DiTCacheConfig(step_start=20, step_end=47, step_interval=2, block_start=10, block_end=30),
    # Wider in both directions, two of every three steps skipped: ~35% of block evaluations skipped.
    "fast": DiTCacheConfig(step_start=15, step_end=47, step_interval=3, block_start=5, block_end=30),
}
"""Named DiTCache schedules at the reference size, 50 steps and 30 layers; :func:`dit_cache_preset` scales
them to a request."""

CACHE_CHOICES = ("none", *DIT_CACHE_PRESETS, "adaptive", *STEP_CACHES)
CACHE_HELP = (
    f"must be one of {', '.join(repr(name) for name in CACHE_CHOICES)}, or an object: "
    "DiTCache {step_start, step_end, step_interval, block_start, block_end}, "
    '{"method": "adaptive", threshold, warmup_steps, final_steps, max_consecutive_skips, branches}, '
    '{"method": "magcache", threshold, max_skip_steps, retention_ratio}, '
    '{"method": "teacache" | "easycache", threshold, warmup_ratio}'
)
"""What an invalid ``cache`` is told it should be."""
_PRESET_NAMES = ", ".join(repr(name) for name in DIT_CACHE_PRESETS)
CACHE_DESCRIPTION = (
    f"Feature cache: 'none' (default), a DiTCache preset ({_PRESET_NAMES}), 'adaptive', 'magcache', "
    "'teacache', 'easycache', or an object (a JSON string of one in a form): {step_start, step_end, "
    "step_interval, block_start, block_end} for DiTCache, "
    f'{{"method": "adaptive", "threshold": {AdaptiveCacheConfig().threshold:g}, ...}} for the adaptive '
    'cache, {"method": "magcache" | "teacache" | "easycache", "threshold": ...} for a step-level cache. '
    "Block ranges must fit the model's transformer blocks; MagCache and TeaCache need the model's "
    "calibration."
)
"""The field's description in the OpenAPI schema."""


def dit_cache_preset(name: str, num_steps: int, num_layers: int) -> DiTCacheConfig:
    """The preset ``name`` sized for ``num_steps`` steps and a model of ``num_layers`` blocks.

    Step and block bounds scale from the reference size (rounded half up); the range always ends at the
    last block, and the final step always computes.

    Raises:
        ValueError: If ``name`` is not a preset or a size is < 1 (a caller's mistake: requests are resolved
            by :func:`resolve_cache`).
    """
    reference = DIT_CACHE_PRESETS.get(name)
    if reference is None:
        raise ValueError(f"unknown DiTCache preset {name!r}; choose from {sorted(DIT_CACHE_PRESETS)}")
    if num_steps < 1 or num_layers < 1:
        raise ValueError(f"a preset needs >= 1 steps and layers, not {num_steps} and {num_layers}")
    end = min(_scaled(reference.step_end, _REF_STEPS, num_steps), num_steps - 1)
    return DiTCacheConfig(
        step_start=min(_scaled(reference.step_start, _REF_STEPS, num_steps), end),
        step_end=end,
        step_interval=reference.step_interval,
        block_start=_scaled(reference.block_start, _REF_LAYERS, num_layers),
        block_end=num_layers,
    )


def _scaled(value: int, reference: int, total: int) -> int:
    """``value * total / reference``, rounded half up."""
    return (value * total + reference // 2) // reference


@dataclass(frozen=True)
class CacheSpec:
    """A request's ``cache``, resolved: ``GenerationParams.cache``.

    Attributes:
        method: ``"none"``, ``"dit"``, ``"adaptive"``, ``"magcache"``, ``"teacache"`` or ``"easycache"``.
        preset: The DiTCache preset asked for by name, else None.
        config: What the hooks run; None without a cache, or for a preset not sized yet (the API did not
            know the model's layer count: see :meth:`sized`).
    """

    method: CacheMethod = "none"
    preset: str | None = None
    config: CacheConfig | None = None

    def sized(self, num_steps: int, num_layers: int) -> CacheSpec:
        """This spec with its preset sized to the request and model, if it was not yet."""
        if self.preset is None or self.config is not None:
            return self
        return replace(self, config=dit_cache_preset(self.preset, num_steps, num_layers))

    def to_json(self) -> dict[str, Any]:
        """The form kept in the job record: ``{"method"}``, plus ``"preset"`` when one was named, plus the
        config's fields when there is a config (flat, as clients send them)."""
        data: dict[str, Any] = {"method": self.method}
        if self.preset is not None:
            data["preset"] = self.preset
        if self.config is not None:
            data.update(self.config.to_json())
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheSpec:
        """Read back :meth:`to_json` (and the records of earlier versions, the same form). Not a check: what
        is read was resolved at create."""
        method = data.get("method", "none")
        preset = data.get("preset")
        assert method in ("none", "dit", "adaptive", *STEP_CACHES), f"not a resolved cache: {dict(data)!r}"
        config_fields = {key: value for key, value in data.items() if key not in ("method", "preset")}
        config: CacheConfig | None = None
        if method == "adaptive":
            config = AdaptiveCacheConfig(**config_fields)
        elif method in STEP_CACHES:
            config = STEP_CACHES[method](**config_fields)
        elif method == "dit" and config_fields:
            config = DiTCacheConfig(**config_fields)
        return cls(method=method, preset=preset, config=config)


NO_CACHE = CacheSpec()
_COUNTS = ("blocks_computed", "blocks_skipped", "passes", "passes_skipped")


def resolve_cache(
    value: str | Mapping[str, Any] | None,
    *,
    num_steps: int | None = None,
    num_layers: int | None = None,
    calibrations: tuple[str, ...] | None = None,
) -> CacheSpec:
    """The ``cache`` field of a request, resolved.

    Args:
        value: The field as the client sent it.
        num_steps: The request's resolved denoising steps (presets scale to them).
        num_layers: The model's transformer blocks (``ModelProfile.num_layers``). When known, presets are
            sized and block ranges checked against it; None (a profile from an older worker) skips both.
        calibrations: The methods the model is calibrated for (``ModelProfile.cache_calibrations``); None
            skips the check.

    Raises:
        InvalidRequest: naming ``cache``.
    """
    spec = _parse(value)
    if calibrations is not None and spec.method in CALIBRATED and spec.method not in calibrations:
        raise _cache_error(
            f"this model has no {spec.method} calibration; its operator can make one with "
            "`wanserve cache-calibrate` (WANSERVE_MODEL set to the model's folder), or ask for 'easycache', "
            "which needs none",
            code="cache_not_calibrated",
        )
    if num_layers is None:
        return spec
    if num_steps is not None:
        spec = spec.sized(num_steps, num_layers)
    if spec.config is not None:
        _check_fits(spec.config, num_layers)
    return spec


def cache_report(spec: CacheSpec, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The ``cache`` of the public video object, the same shape for every method::

        {
            "method": "none" | "dit" | "adaptive" | "magcache" | "teacache" | "easycache",
            "preset": str | None,                      # the DiTCache preset named in the request
            "config": {...} | None,                    # the config's fields (a preset's sized to the model);
                                                       # None without a cache or before a preset is sized
            "blocks_computed": int | None,             # block evaluations over every branch of the group,
            "blocks_skipped": int | None,              # None until the worker reports
            "passes": int | None,                      # transformer forwards (one per branch and step)
            "passes_skipped": int | None,              # forwards that skipped the cached block range
            "steps_skipped": {"cond": int, "uncond": int} | None,  # the same, per CFG branch
        }

    Args:
        spec: What the request asked for (or, from the worker, what it ran).
        counts: The worker's counts (``block_cache_stats``); None before it reports.
    """
    return {
        "method": spec.method,
        "preset": spec.preset,
        "config": spec.config.to_json() if spec.config is not None else None,
        **{name: None if counts is None else counts[name] for name in _COUNTS},
        # Reports of workers from before the per-branch counts have none.
        "steps_skipped": None
        if counts is None or "cond_steps_skipped" not in counts
        else {branch: counts[f"{branch}_steps_skipped"] for branch in ("cond", "uncond")},
    }


def _parse(value: str | Mapping[str, Any] | None) -> CacheSpec:
    """Everything that does not depend on the model."""
    if value is None:
        return NO_CACHE
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):  # an object sent as a form field
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise _cache_error(f"not valid JSON ({_short(exc, 80)})") from None
        elif text == "none":
            return NO_CACHE
        elif text in DIT_CACHE_PRESETS:
            return CacheSpec(method="dit", preset=text)
        elif text == "adaptive":
            return CacheSpec(method="adaptive", config=AdaptiveCacheConfig())
        elif text in STEP_CACHES:
            return CacheSpec(method=text, config=STEP_CACHES[text]())  # type: ignore[arg-type]
        else:
            raise _cache_error(f"unknown cache {_short(value)!r}; it {CACHE_HELP}", code="unknown_cache")
    if not isinstance(value, Mapping):
        raise _cache_error(CACHE_HELP)
    method = value.get("method", "dit")
    if method == "none":
        _check_keys(value, ())
        return NO_CACHE
    if method == "dit":
        return CacheSpec(method="dit", config=_dit_config(value))
    if method == "adaptive":
        return CacheSpec(method="adaptive", config=_adaptive_config(value))
    if isinstance(method, str) and method in STEP_CACHES:
        return CacheSpec(method=method, config=_step_config(STEP_CACHES[method], value))  # type: ignore[arg-type]
    raise _cache_error(
        f"unknown method {_short(method)!r}; choose 'dit', 'adaptive', 'magcache', 'teacache', 'easycache' "
        "or 'none'"
    )


def _dit_config(value: Mapping[str, Any]) -> DiTCacheConfig:
    _check_keys(value, _DIT_FIELDS)
    missing = [name for name in _DIT_FIELDS if name not in value]
    if missing:
        raise _cache_error(
            f"a DiTCache schedule needs {', '.join(_DIT_FIELDS)}; missing {', '.join(missing)}"
        )
    config = DiTCacheConfig(**{name: _cache_int(value, name) for name in _DIT_FIELDS})
    checks = [
        (config.step_start >= 0, "step_start must be >= 0"),
        (config.step_end >= config.step_start, "step_end must be >= step_start"),
        (config.step_interval >= 1, "step_interval must be >= 1"),
        (config.block_start >= 0, "block_start must be >= 0"),
        (config.block_end > config.block_start, "block_end must be > block_start"),
    ]
    for ok, message in checks:
        if not ok:
            raise _cache_error(message)
    return config


def _adaptive_config(value: Mapping[str, Any]) -> AdaptiveCacheConfig:
    _check_keys(value, _ADAPTIVE_FIELDS)
    given = {**AdaptiveCacheConfig().to_json(), **{k: v for k, v in value.items() if k != "method"}}
    threshold = given["threshold"]
    _check_number(threshold, "threshold", above=0.0, at_most=MAX_ADAPTIVE_THRESHOLD)
    counts: dict[str, int] = {}
    for name, least in (("warmup_steps", 0), ("final_steps", 0), ("max_consecutive_skips", 1)):
        counts[name] = _cache_int(given, name)
        if counts[name] < least:
            raise _cache_error(f"{name} must be >= {least}")
    branches = given["branches"]
    if branches not in ("separate", "together"):
        raise _cache_error(f"branches must be 'separate' or 'together', not {_short(branches)!r}")
    return AdaptiveCacheConfig(threshold=float(threshold), branches=branches, **counts)


def _step_config(kind: type[StepCacheConfig], value: Mapping[str, Any]) -> StepCacheConfig:
    names = tuple(field.name for field in fields(kind))
    _check_keys(value, names)
    given = {**kind().to_json(), **{k: v for k, v in value.items() if k != "method"}}
    _check_number(given["threshold"], "threshold", above=0.0, at_most=MAX_STEP_THRESHOLD)
    given["threshold"] = float(given["threshold"])
    for name in ("retention_ratio", "warmup_ratio"):
        if name in given:
            _check_number(given[name], name, at_least=0.0, below=1.0)
            given[name] = float(given[name])
    if "max_skip_steps" in given:
        given["max_skip_steps"] = _cache_int(given, "max_skip_steps")
        if given["max_skip_steps"] < 1:
            raise _cache_error("max_skip_steps must be >= 1")
    return kind(**{name: given[name] for name in names})


def _check_number(
    value: Any,
    name: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> None:
    """A number in the given bounds. The range check also rejects NaN and infinities (every comparison
    with NaN is false), and a huge int that math.isfinite() could not convert to a float."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        low = f"> {above:g}" if above is not None else f">= {at_least:g}"
        high = f"< {below:g}" if below is not None else f"<= {at_most:g}"
        raise _cache_error(f"{name} must be a number {low} and {high}")


def _check_fits(config: CacheConfig, num_layers: int) -> None:
    if isinstance(config, StepCacheConfig):
        return
    if isinstance(config, AdaptiveCacheConfig):
        if num_layers < 2:
            raise _cache_error(
                f"the adaptive cache needs at least 2 transformer blocks; this model has {num_layers}"
            )
        return
    if config.block_end > num_layers:
        raise _cache_error(
            f"block_end ({config.block_end}) must be <= the model's {num_layers} transformer blocks"
        )


def _check_keys(value: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - {"method", *allowed})
    if unknown:
        expected = ", ".join(allowed) if allowed else "no other field"
        names = ", ".join(repr(_short(name)) for name in unknown[:5])
        raise _cache_error(f"unknown field {names}; expected {expected}")


def _cache_int(value: Mapping[str, Any], name: str) -> int:
    number = value[name]
    if not isinstance(number, int) or isinstance(number, bool) or abs(number) > _MAX_CACHE_INT:
        raise _cache_error(f"{name} must be an integer (at most {_MAX_CACHE_INT}), got {_short(number)!r}")
    return number


def _short(value: Any, limit: int = 40) -> Any:
    """A value to quote in an error message, cut short: the body may be a megabyte."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return value
    return text[:limit] + "..."


def _cache_error(detail: str, *, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid 'cache': {detail}.", param="cache", code=code)
