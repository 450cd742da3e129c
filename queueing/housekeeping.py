"""Housekeeping: forget consumers and workers that are gone.

Every worker process reads under its own consumer name (host-pid unless named), so each
restart leaves one more consumer in its stages' groups, and a SIGKILLed worker never retires
from the worker registry. :func:`sweep` removes

- **idle consumers that hold nothing**: no pending entries, idle (no read, no claim) for at
  least ``consumer_idle_s``, and not a live worker (one whose heartbeat is within the
  visibility timeout). The check and the ``XGROUP DELCONSUMER`` run in one script, so a
  consumer that still holds entries is never deleted: deleting it would drop its pending
  entries, which must be claimed instead (the claim moves them to a live consumer, after which
  the dead one holds nothing and goes at a later sweep);
- **workers whose heartbeat is long gone** (older than ``worker_gone_s``) from the worker
  registry (``bl:workers`` and ``bl:workers:info``).

Both are safe to run from any number of workers at once, at any time.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from queueing.cluster import AsyncRedis
from queueing.keys import Keys
from queueing.lanes import LANES
from queueing.settings import Settings

IDLE_FACTOR = 10
"""Consumers and workers silent for this many visibility timeouts are taken for gone."""

# Removes the consumers of one stream's group that hold no pending entry, have been idle for
# at least ARGV[2] ms and are not named in ARGV[3...] (the live workers). Answers their names.
# KEYS: stream; ARGV: group, min idle (ms), live consumer names...
_REMOVE_IDLE_CONSUMERS = """
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local reply = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(reply) ~= 'table' or reply.err then return {} end
local min_idle, removed = tonumber(ARGV[2]), {}
for _, consumer in ipairs(reply) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  local name = info['name']
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= min_idle and not live[name] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
  end
end
return removed
"""


@dataclass(frozen=True)
class Swept:
    """What one :func:`sweep` removed."""

    consumers: list[tuple[str, str]] = field(default_factory=list)
    """(stage, consumer) pairs deleted from their groups (once per partition it was in)."""
    workers: list[str] = field(default_factory=list)
    """Workers removed from the registry."""

    def __bool__(self) -> bool:
        return bool(self.consumers or self.workers)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def default_idle_s(settings: Settings) -> float:
    """How long a consumer or a worker must have been silent to be taken for gone."""
    return IDLE_FACTOR * settings.visibility_timeout_s


async def live_workers(client: AsyncRedis, settings: Settings) -> set[str]:
    """Workers whose last heartbeat is within the visibility timeout."""
    since = time.time() - settings.visibility_timeout_s
    names = await client.zrangebyscore(Keys(settings.prefix).workers, since, "+inf")
    return {_text(name) for name in names}


async def remove_idle_consumers(
    client: AsyncRedis,
    settings: Settings,
    stages: Iterable[str],
    *,
    idle_s: float | None = None,
    live: Collection[str] | None = None,
) -> list[tuple[str, str]]:
    """Delete, from the groups of ``stages`` (every partition), the consumers that hold no
    pending entry, have been idle for ``idle_s`` (default: :func:`default_idle_s`) and are not
    in ``live`` (default: :func:`live_workers`). Returns (stage, consumer) per deletion."""
    keys = Keys(settings.prefix)
    min_idle_ms = int(1000 * (default_idle_s(settings) if idle_s is None else idle_s))
    if live is None:
        live = await live_workers(client, settings)
    script = client.register_script(_REMOVE_IDLE_CONSUMERS)
    removed: list[tuple[str, str]] = []
    for stage in stages:
        for partition in range(settings.partitions):
            names: dict[str, None] = {}  # (once per partition, whatever its lanes)
            for lane in LANES:
                names |= dict.fromkeys(
                    await script(
                        keys=[keys.stream(partition, stage, lane)],
                        args=[Keys.group(stage), min_idle_ms, *sorted(live)],
                    )
                )
            removed += [(stage, _text(name)) for name in names]
    return removed


async def prune_workers(
    client: AsyncRedis, settings: Settings, *, gone_s: float | None = None
) -> list[str]:
    """Remove from the worker registry the workers whose last heartbeat is older than
    ``gone_s`` (default: :func:`default_idle_s`); returns their names.

    The sorted set is read and trimmed in one transaction (a worker that beats meanwhile has a
    newer score and stays); the info hash follows. Should a long-silent worker beat between
    the two, its info is restored by its next heartbeat."""
    keys = Keys(settings.prefix)
    cutoff = time.time() - (default_idle_s(settings) if gone_s is None else gone_s)
    pipe = client.pipeline(transaction=True)
    pipe.zrangebyscore(keys.workers, "-inf", f"({cutoff!r}")
    pipe.zremrangebyscore(keys.workers, "-inf", f"({cutoff!r}")
    gone, _ = await pipe.execute()
    if gone:
        await client.hdel(keys.worker_info, *gone)
    return [_text(name) for name in gone]


async def sweep(
    client: AsyncRedis,
    settings: Settings,
    stages: Iterable[str],
    *,
    consumer_idle_s: float | None = None,
    worker_gone_s: float | None = None,
) -> Swept:
    """Prune the worker registry, then remove the idle consumers of ``stages`` that hold
    nothing (see the module's docstring). Thresholds default to :func:`default_idle_s`."""
    workers = await prune_workers(client, settings, gone_s=worker_gone_s)
    consumers = await remove_idle_consumers(client, settings, stages, idle_s=consumer_idle_s)
    return Swept(consumers, workers)
