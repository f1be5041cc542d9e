"""From a request's resolved ``cache`` field (``GenerationParams.cache``) to a cache config for the model."""

from __future__ import annotations

from typing import Any

from worker.cache.adaptive import AdaptiveCacheConfig
from worker.cache.blockcache import CacheConfig, check_block_cache_config
from worker.cache.ditcache import DiTCacheConfig, dit_cache_preset


def cache_from_spec(
    spec: dict[str, Any], *, num_steps: int, num_blocks: int
) -> tuple[CacheConfig | None, dict[str, Any]]:
    """The config a request asks for, sized to this model, and how to report it.

    Args:
        spec: ``{"method": "none"}``, ``{"method": "dit", "preset": name}``, ``{"method": "dit",
            <DiTCacheConfig fields>}`` or ``{"method": "adaptive", <AdaptiveCacheConfig fields>}``.
        num_steps: The request's denoising steps (presets scale to them).
        num_blocks: The transformer's block count.

    Returns:
        ``(config or None, {"method", "preset", "config"})``, the second for the video object.

    Raises:
        ValueError: If the spec is malformed or does not fit the model (``block_end`` beyond the
            blocks); the message names the field.
    """
    method = spec.get("method", "none")
    fields = {key: value for key, value in spec.items() if key not in ("method", "preset")}
    config: DiTCacheConfig | AdaptiveCacheConfig
    preset = spec.get("preset")
    if method == "none":
        return None, {"method": "none", "preset": None, "config": None}
    if method == "dit" and preset is not None:
        if fields:
            raise ValueError(f"a DiTCache preset takes no other fields, got {sorted(fields)}")
        config = dit_cache_preset(str(preset), num_steps, num_blocks)
    elif method in ("dit", "adaptive"):
        try:
            config = DiTCacheConfig(**fields) if method == "dit" else AdaptiveCacheConfig(**fields)
        except TypeError as exc:  # a missing or unknown field
            raise ValueError(str(exc)) from None
    else:
        raise ValueError(f"unknown cache method {method!r}")
    check_block_cache_config(config, num_blocks)
    return config, {"method": method, "preset": preset, "config": _fields(config)}


def _fields(config: DiTCacheConfig | AdaptiveCacheConfig) -> dict[str, Any]:
    if isinstance(config, AdaptiveCacheConfig):
        return config.to_json()
    return {
        "step_start": config.step_start,
        "step_end": config.step_end,
        "step_interval": config.step_interval,
        "block_start": config.block_start,
        "block_end": config.block_end,
    }
