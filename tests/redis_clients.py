"""Who is connected to the test database (other test runs may share the Redis server, not the database)."""

from __future__ import annotations

from typing import Any

from redis import Redis


def clients(redis: Redis) -> list[dict[str, Any]]:
    db = str(redis.connection_pool.connection_kwargs.get("db", 0))
    return [client for client in redis.client_list() if client["db"] == db]


def subscribers(redis: Redis) -> list[dict[str, Any]]:
    """The pattern subscribers (pub/sub is server-wide: only this database's clients are counted)."""
    return [client for client in clients(redis) if int(client["psub"]) > 0]
