"""Feature caches for the Wan transformer."""

from worker.cache.ditcache import (
    DITCACHE_PRESETS,
    DiTCacheConfig,
    apply_dit_cache,
    dit_cache_preset,
    dit_cache_stats,
    remove_dit_cache,
    reset_dit_cache,
)

__all__ = [
    "DITCACHE_PRESETS",
    "DiTCacheConfig",
    "apply_dit_cache",
    "dit_cache_preset",
    "dit_cache_stats",
    "remove_dit_cache",
    "reset_dit_cache",
]
