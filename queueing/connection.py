"""Opening Redis connections, and turning redis-py's errors into ours where they enter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
import redis.connection
import redis.exceptions
import redis.utils

from queueing.errors import BrokerUnavailable, ConfigError
from queueing.settings import Settings

_NO_URL = (
    "no Redis server is configured: set REDIS_URL (e.g. redis://localhost:6379/0), "
    "or run `batchline up`, which starts an embedded one"
)


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ConfigError(_NO_URL)
    return settings.redis_url


def _timeouts(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """A socket timeout longer than any blocking command we send (XREADGROUP BLOCK, WAITAOF):
    redis-py's default would cut an idle worker's reads short."""
    options.setdefault("socket_timeout", settings.block_ms / 1000 + 10)
    return options


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking client (connection pool) for ``settings.redis_url``."""
    options = _timeouts(settings, options)
    try:
        return redis.Redis.from_url(_url(settings), **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc


ASYNC_POOL_SIZE = 64
"""Connections one asyncio client opens at most (more callers wait for one)."""


def connect_async(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (connection pool) for ``settings.redis_url``."""
    options = _timeouts(settings, options)
    # Past its size, redis-py's default pool raises "Too many connections"; a blocking pool
    # makes a burst of requests (a gateway at high concurrency) wait for a connection instead.
    options.setdefault("max_connections", ASYNC_POOL_SIZE)
    options.setdefault("timeout", settings.block_ms / 1000 + 10)
    try:
        pool = redis.asyncio.BlockingConnectionPool.from_url(_url(settings), **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc
    _pack_with_hiredis(pool)
    return redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def _pack_with_hiredis(pool: redis.asyncio.ConnectionPool) -> None:
    """redis-py's asyncio connections encode commands in pure Python (its blocking ones use
    hiredis): for the long argument lists of our scripts that was the worker's largest cost.
    Give the pool's connections the blocking client's hiredis packer."""
    if not redis.utils.HIREDIS_AVAILABLE:
        return
    serializer = redis.connection.HiredisRespSerializer()

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        packed: list[bytes] = serializer.pack(*args)
        return packed

    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command})


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Re-raise redis-py's connection failures as BrokerUnavailable."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc


def is_unknown_command(exc: Exception) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and "unknown command" in str(exc).lower()
