"""Opening Redis connections, and turning redis-py's errors into ours where they enter.

:data:`REDIS_DOWN` is the one definition of "Redis is unreachable"; :class:`OutageLog` is how a
loop that retries through an outage logs it (once, then rarely, then "back" once), and
:func:`wait_until_ready` is how a process waits at start-up for a server still loading its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.connection
import redis.exceptions
import redis.utils

from queueing.cluster import AsyncCluster, AsyncRedis, Cluster, SyncRedis, is_cluster
from queueing.errors import BrokerUnavailable, ConfigError
from queueing.settings import Settings

T = TypeVar("T")

REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,  # (SlotNotCoveredError; "cannot be connected")
)
"""What redis-py raises when Redis cannot serve a command for now: it is down, restarting,
unreachable (socket errors and timeouts are OSErrors), or still loading its dataset at start-up
(``BusyLoadingError`` is a ``ConnectionError``); in a cluster, also while a master fails over
(CLUSTERDOWN, an uncovered slot, no node reachable, redis-py's routing giving up) or a slot
migrates (TRYAGAIN).
Retry these; anything else is a real error."""

REDIS_FULL: tuple[type[Exception], ...] = (redis.exceptions.OutOfMemoryError,)
"""Redis refused a write at its ``maxmemory`` (policy ``noeviction``; a script that writes is
refused before it runs). Workers retry it like an outage: memory frees as records expire."""


def is_loading(exc: BaseException) -> bool:
    """The server is up but still loading its dataset (AOF/RDB) into memory."""
    return isinstance(exc, redis.exceptions.BusyLoadingError)


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


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    """A cluster missing a master (failing over, or down) still serves the other masters'
    partitions: redis-py's default would refuse every command until all slots are covered."""
    options.setdefault("require_full_coverage", False)
    return options


def connect(settings: Settings, **options: Any) -> SyncRedis:
    """A blocking client (connection pool) for ``settings.redis_url``: a cluster client when
    it names a node of a Redis Cluster."""
    options = _timeouts(settings, options)
    url = _url(settings)
    try:
        if is_cluster(url):
            return Cluster.from_url(url, **_cluster_options(options))
        pool = redis.ConnectionPool.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc
    _pack_with_hiredis(pool)
    return redis.Redis.from_pool(pool)  # owns the pool: close() closes it


ASYNC_POOL_SIZE = 64
"""Connections one asyncio client opens at most (more callers wait for one)."""
CLUSTER_POOL_SIZE = 1024
"""Connections one asyncio cluster client opens at most to each node."""


def connect_async(settings: Settings, **options: Any) -> AsyncRedis:
    """An asyncio client (connection pool) for ``settings.redis_url``: a cluster client when
    it names a node of a Redis Cluster."""
    options = _timeouts(settings, options)
    url = _url(settings)
    if is_cluster(url):
        # Per node, and not a waiting pool (past it a command fails): a worker holds a blocking
        # read per stage and partition, so it needs more than a plain client.
        options.setdefault("max_connections", CLUSTER_POOL_SIZE)
        return AsyncCluster.from_url(url, **_cluster_options(options))
    # Past its size, redis-py's default pool raises "Too many connections"; a blocking pool
    # makes a burst of requests (a gateway at high concurrency) wait for a connection instead.
    options.setdefault("max_connections", ASYNC_POOL_SIZE)
    options.setdefault("timeout", settings.block_ms / 1000 + 10)
    try:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL: {exc}"
        ) from exc
    _pack_with_hiredis(pool)
    return redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def _pack_with_hiredis(pool: redis.ConnectionPool | redis.asyncio.ConnectionPool) -> None:
    """Give the pool's connections a packer straight to hiredis. redis-py's asyncio
    connections encode commands in pure Python (for the long argument lists of our scripts
    that was the worker's largest cost), and its blocking ones copy every argument first."""
    if not redis.utils.HIREDIS_AVAILABLE:
        return
    import hiredis  # (there only when available)

    serializer = redis.connection.HiredisRespSerializer()

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        # (straight to hiredis when it can: the serializer first copies every argument, to
        # turn a bytearray or memoryview into bytes, and splits a command name like "CLIENT
        # SETNAME"; hiredis refuses those with a TypeError, and the serializer takes them)
        if isinstance(args[0], str) and " " not in args[0]:
            with contextlib.suppress(TypeError):
                return [hiredis.pack_command(args)]
        packed: list[bytes] = serializer.pack(*args)
        return packed

    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command})


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Re-raise redis-py's connection failures as BrokerUnavailable."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc


def is_unknown_command(exc: Exception) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and "unknown command" in str(exc).lower()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutageLog:
    """Logs the failures of a call that is retried (a heartbeat, a read, a sweep) without
    flooding the log while Redis is away.

    The first failure of a streak is logged at once: an outage (:data:`REDIS_DOWN`) as one
    WARNING line without a traceback, anything else at ERROR with its traceback (a bug, which
    must be seen). Further failures of the streak log one line at most every ``repeat_s``,
    doubling up to ``max_repeat_s``; a new kind of exception in the streak is logged at once.
    The first success after a streak logs once that it is over. Use it as::

        outage = OutageLog(log, f"stage {name}: heartbeat")
        ...
        with outage.guard():        # swallows and logs Exception; a success ends the streak
            await beat()

    or call :meth:`failed` / :meth:`succeeded` from your own ``try``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        repeat_s: float = 10.0,
        max_repeat_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.repeat_s = repeat_s
        self.max_repeat_s = max_repeat_s
        self._clock = clock
        self._since: float | None = None
        self._failures = 0
        self._kinds: set[type[BaseException]] = set()
        self._next_at = 0.0
        self._interval = repeat_s

    @property
    def failing(self) -> bool:
        """A streak of failures is going on (no success since the last failure)."""
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        outage = isinstance(exc, REDIS_DOWN + REDIS_FULL)
        if self._since is None:
            self._since = now
            self._interval = self.repeat_s
        elif type(exc) in self._kinds:
            if now < self._next_at:
                return
            self.logger.warning(
                "%s: still failing after %.0fs (%d attempts); last: %s",
                self.what,
                now - self._since,
                self._failures,
                _describe(exc),
            )
            self._interval = min(self._interval * 2, self.max_repeat_s)
            self._next_at = now + self._interval
            return
        self._kinds.add(type(exc))
        self._next_at = now + self._interval
        if outage:
            state = (
                "is out of memory (maxmemory)"
                if isinstance(exc, REDIS_FULL)
                else "is loading its dataset"
                if is_loading(exc)
                else "is unreachable"
            )
            self.logger.warning(
                "%s: Redis %s (%s); retrying, logging again at most every %gs (then rarer)",
                self.what,
                state,
                _describe(exc),
                self._interval,
            )
        else:
            self.logger.error("%s failed; retrying", self.what, exc_info=exc)

    def succeeded(self) -> None:
        if self._since is None:
            return
        outage = any(issubclass(kind, REDIS_DOWN + REDIS_FULL) for kind in self._kinds)
        self.logger.info(
            "%s: %s after %.1fs and %d failed attempts",
            self.what,
            "Redis answers again" if outage else "works again",
            self._clock() - self._since,
            self._failures,
        )
        self._since = None
        self._failures = 0
        self._kinds.clear()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block; log an Exception it raises (and swallow it), or end a streak."""
        try:
            yield
        except Exception as exc:
            self.failed(exc)
        else:
            self.succeeded()


async def until_written(call: Callable[[], Awaitable[T]], outage: OutageLog) -> T:
    """``await call()``, again (backing off up to 1 s) while Redis refuses writes at its
    ``maxmemory``: memory frees as finished jobs' records expire, and a worker that waits
    serves once it has; the wait is logged once (``outage``)."""
    delay = 0.05
    while True:
        try:
            result = await call()
        except REDIS_FULL as exc:
            outage.failed(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            outage.succeeded()
            return result


STARTUP_UNREACHABLE_S = 30.0
"""How long a process starting up waits for a server that does not answer at all."""


async def wait_until_ready(
    client: AsyncRedis,
    logger: logging.Logger,
    what: str,
    *,
    unreachable_s: float = STARTUP_UNREACHABLE_S,
) -> None:
    """Return once the server answers PING. While it is loading its dataset (``LOADING``, after
    a restart with a large AOF) wait as long as that takes; while it does not answer at all,
    wait up to ``unreachable_s`` (it may be starting next to us), then raise
    :class:`BrokerUnavailable`. Retries back off up to 1 s; the wait is logged once."""
    outage = OutageLog(logger, what, repeat_s=10.0, max_repeat_s=60.0)
    delay = 0.05
    unreachable_since: float | None = None
    while True:
        try:
            await client.ping()
        except REDIS_DOWN as exc:
            now = time.monotonic()
            if is_loading(exc):
                unreachable_since = None
            else:
                unreachable_since = now if unreachable_since is None else unreachable_since
                if now - unreachable_since >= unreachable_s:
                    raise BrokerUnavailable(
                        f"Redis is unreachable (waited {unreachable_s:g}s): {exc}"
                    ) from exc
            outage.failed(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            outage.succeeded()
            return
