"""Feature caches for the Wan transformer: DiTCache (static schedule) and an adaptive cache, installed
once (:func:`install_block_cache`) and switched per request (:func:`set_block_cache`).

Their configs, presets and checks are the cache contract's, :mod:`service.core.cache`; these hooks run them.
"""

from worker.cache.adaptive import relative_change
from worker.cache.blockcache import (
    block_cache_stats,
    block_cache_trace,
    has_block_cache,
    install_block_cache,
    remove_block_cache,
    reset_block_cache,
    set_block_cache,
)
from worker.cache.ditcache import (
    apply_dit_cache,
    dit_cache_stats,
    remove_dit_cache,
    reset_dit_cache,
)

__all__ = [
    "apply_dit_cache",
    "block_cache_stats",
    "block_cache_trace",
    "dit_cache_stats",
    "has_block_cache",
    "install_block_cache",
    "relative_change",
    "remove_block_cache",
    "remove_dit_cache",
    "reset_block_cache",
    "reset_dit_cache",
    "set_block_cache",
]
