"""Opening Redis connections, and turning redis-py's errors into ours where they enter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

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


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking client (connection pool) for ``settings.redis_url``."""
    try:
        return redis.Redis.from_url(_url(settings), **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc


def connect_async(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (connection pool) for ``settings.redis_url``."""
    try:
        return redis.asyncio.Redis.from_url(_url(settings), **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Re-raise redis-py's connection failures as BrokerUnavailable."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc


def is_unknown_command(exc: Exception) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and "unknown command" in str(exc).lower()
