"""Redis Cluster: whether ``REDIS_URL`` names a node of one, and where the partitions live.

batchline needs no setting for a cluster: :func:`is_cluster` asks the node the URL names
(``INFO cluster``), and :mod:`queueing.connection` then opens redis-py's cluster client instead
of a plain one. Everything a job touches carries its partition's hash tag (``bl:{3}:...``), so
each partition lives in one slot, on one master, and every script runs there atomically.

What a cluster changes, and where that is handled:

- a command naming keys of several partitions is refused (CROSSSLOT): reads of a stage's
  streams go one partition at a time (:class:`queueing.streams.StageQueue`), submits one
  script call per partition (they already were);
- wake-ups are sharded pub/sub (SPUBLISH on a channel in the job's slot), and a listener
  subscribes on each master that owns some of its channels (:mod:`queueing.waiters`);
- a command that must follow a write on the same connection (WAIT, for durable submits) goes
  over a plain connection to the master that owns the slot (:func:`node_connection_async`).
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.backoff
import redis.cluster
import redis.exceptions
import redis.retry
from redis.crc import key_slot

from queueing.keys import Keys

log = logging.getLogger(__name__)

AsyncRedis: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
"""An asyncio client of a standalone server or of a cluster."""
SyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster
"""A blocking client of a standalone server or of a cluster."""

_KNOWN: dict[str, bool] = {}

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class Cluster(redis.cluster.RedisCluster):
    """redis-py's cluster client, loading scripts on the masters that answer: its own
    ``script_load`` (what a script's first call runs on NOSCRIPT) sends to every master and
    fails if one is down, which would stop the partitions of every other master too."""

    def script_load(self, script: Any) -> Any:
        sha = None
        error: Exception | None = None
        for node in self.get_primaries():  # type: ignore[no-untyped-call]
            try:
                sha = self.execute_command(  # type: ignore[no-untyped-call]
                    "SCRIPT LOAD", script, target_nodes=node
                )
            except _UNREACHABLE as exc:
                error = exc
        if sha is None:
            raise error or redis.exceptions.ConnectionError("no master answered SCRIPT LOAD")
        return sha


class AsyncCluster(redis.asyncio.cluster.RedisCluster):
    """Asyncio twin of :class:`Cluster`."""

    async def script_load(self, script: Any) -> Any:
        sha = None
        error: Exception | None = None
        for node in self.get_primaries():
            try:
                sha = await self.execute_command("SCRIPT LOAD", script, target_nodes=node)
            except _UNREACHABLE as exc:
                error = exc
        if sha is None:
            raise error or redis.exceptions.ConnectionError("no master answered SCRIPT LOAD")
        return sha


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a node of a Redis Cluster (asked once per URL and process). A
    unix socket is never one; a server that cannot be asked now is taken for a standalone one
    (and asked again next time)."""
    if url.startswith("unix:"):
        return False
    known = _KNOWN.get(url)
    if known is not None:
        return known
    probe = redis.Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    try:
        info: Any = probe.info("cluster")
    except redis.exceptions.ResponseError:
        info = {}  # (a server without INFO cluster, or one that refuses it, is standalone)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        log.warning(
            "could not ask %s whether it is a cluster node (%s): taken as standalone", url, exc
        )
        return False
    finally:
        probe.close()
    _KNOWN[url] = bool(info.get("cluster_enabled"))
    return _KNOWN[url]


def partition_slot(partition: int) -> int:
    """The slot every key of ``partition`` hashes to (the tag is the partition's number)."""
    return key_slot(Keys().stats(partition).encode())


def layout(client: AsyncRedis | SyncRedis, partitions: int) -> dict[str, list[int]]:
    """Which master (``host:port``) holds which partitions, from the client's view of the
    slots; empty for a standalone server."""
    if not isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster):
        return {}
    out: dict[str, list[int]] = {}
    for partition in range(partitions):
        out.setdefault(master_name(client, Keys().stats(partition)), []).append(partition)
    return out


def balanced_slot_ranges(masters: int, partitions: int) -> list[tuple[int, int]]:
    """Slot ranges, one per master, that give each master an even share of the partitions
    (for clusters batchline starts itself: with even thirds of the slot space, 3 partitions
    would land on 2 masters). Each range is as close to an even share of slots as that allows."""
    slots = sorted(partition_slot(p) for p in range(partitions))
    bounds = [0]
    for master in range(1, masters):
        even = master * 16384 // masters
        if partitions >= masters:
            # cut halfway between the last partition of this master and the next one's
            last = slots[master * partitions // masters - 1]
            first = slots[master * partitions // masters]
            even = (last + first + 1) // 2
        bounds.append(max(even, bounds[-1] + 1))
    bounds.append(16384)
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


_NODE_OPTIONS = (
    "host",
    "port",
    "username",
    "password",
    "credential_provider",
    "socket_timeout",
    "socket_connect_timeout",
)


def _node_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The connection options of a cluster node that a plain client takes too: address,
    credentials, timeouts and TLS (a ``rediss://`` cluster's node connections stay TLS)."""
    out = {name: kwargs[name] for name in _NODE_OPTIONS if name in kwargs}
    tls = {name: value for name, value in kwargs.items() if name.startswith("ssl_")}
    connection_class = kwargs.get("connection_class")
    if tls or (connection_class is not None and "SSL" in connection_class.__name__):
        out.update(tls, ssl=True)
    return out


def master_name(
    client: redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster, key: str
) -> str:
    """``host:port`` of the master that owns ``key``'s slot (as the client knows it)."""
    node = client.get_node_from_key(key)
    if node is None:
        raise redis.exceptions.SlotNotCoveredError(f"no master serves the slot of {key!r}")
    return str(node.name)


def node_connection_async(
    client: redis.asyncio.cluster.RedisCluster, key: str
) -> redis.asyncio.Redis:
    """A plain client (one connection) to the master that owns ``key``'s slot, for commands
    that must follow a write on the same connection. The caller closes it."""
    node = client.get_node_from_key(key)
    if node is None:
        raise redis.exceptions.SlotNotCoveredError(f"no master serves the slot of {key!r}")
    return redis.asyncio.Redis(
        **_node_kwargs(node.connection_kwargs), single_connection_client=True
    )


def node_connection(client: redis.cluster.RedisCluster, key: str) -> redis.Redis:
    """Blocking twin of :func:`node_connection_async`."""
    node = client.get_node_from_key(key)
    if node is None or node.redis_connection is None:
        raise redis.exceptions.SlotNotCoveredError(f"no master serves the slot of {key!r}")
    kwargs = node.redis_connection.connection_pool.connection_kwargs
    # (Not single_connection_client: that connects at once, here. A fresh pool used by one
    # caller at a time hands back the same connection for each command anyway.)
    return redis.Redis(**_node_kwargs(kwargs))


def demoted(exc: redis.exceptions.ResponseError) -> bool:
    """Whether ``exc`` says the node it came from is (now) a replica: it refuses a write
    (READONLY) or WAIT ("WAIT cannot be used with replica instances")."""
    return isinstance(exc, redis.exceptions.ReadOnlyError) or "replica" in str(exc).lower()
