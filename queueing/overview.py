"""What is going on: backlog and counters per stage, live workers. Read by ``batchline status``,
the gateway's pipeline pages and its metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from queueing.cluster import AsyncRedis, layout
from queueing.keys import Keys
from queueing.lanes import LANES
from queueing.message import loads
from queueing.registry import PipelineSpec, parse_registry
from queueing.settings import Settings

COUNTERS = ("done", "failed", "expired", "dead", "redelivered", "next", "join", "skip", "fenced")
"""Per-stage counters the FINISH and CLAIM scripts keep: ``next`` and ``join`` count items
handed on to other stages; ``fenced``, results dropped because another worker claimed them."""


@dataclass(frozen=True)
class StageStats:
    name: str
    backlog: int
    """Entries queued or in flight (XLEN over all partitions and lanes)."""
    counters: dict[str, int]
    workers: list[str]
    """Live consumers serving this stage."""
    lanes: dict[str, int] = field(default_factory=dict)
    """The backlog in each priority lane (see :mod:`queueing.lanes`)."""


@dataclass(frozen=True)
class Overview:
    pipelines: dict[str, PipelineSpec]
    stages: dict[str, StageStats]
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Live consumers: name -> what they run (stages, pid, host, device, last_seen)."""
    nodes: dict[str, list[int]] = field(default_factory=dict)
    """In a Redis Cluster, each master (``host:port``) and the partitions it holds; empty for
    a standalone server."""


async def overview(client: AsyncRedis, settings: Settings) -> Overview:
    keys = Keys(settings.prefix)
    parts = range(settings.partitions)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.registry)
    pipe.zrange(keys.workers, 0, -1, withscores=True)
    pipe.hgetall(keys.worker_info)
    for p in parts:
        pipe.hgetall(keys.stats(p))
    registry, beats, info, *stats_raw = await pipe.execute()
    specs = parse_registry(registry)

    now = time.time()
    workers: dict[str, dict[str, Any]] = {}
    for member, score in beats:
        name = member.decode()
        if now - float(score) < settings.visibility_timeout_s:
            raw = info.get(member)
            workers[name] = {**(loads(raw) if raw else {}), "last_seen": float(score)}

    counters: dict[str, int] = {}
    for raw in stats_raw:
        for name, value in raw.items():
            counters[name.decode()] = counters.get(name.decode(), 0) + int(value)

    names = [stage.name for spec in specs.values() for stage in spec.stages]
    pipe = client.pipeline(transaction=False)
    for name in names:
        for lane in LANES:
            for p in parts:
                pipe.xlen(keys.stream(p, name, lane))
    lengths = iter(await pipe.execute())
    stages = {}
    for name in names:
        lanes = {lane: sum(next(lengths) for _ in parts) for lane in LANES}
        stages[name] = StageStats(
            name=name,
            backlog=sum(lanes.values()),
            lanes=lanes,
            counters={what: counters.get(f"{name}:{what}", 0) for what in COUNTERS},
            workers=sorted(w for w, doc in workers.items() if name in doc.get("stages", ())),
        )
    return Overview(specs, stages, workers, layout(client, settings.partitions))
