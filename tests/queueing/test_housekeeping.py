"""Housekeeping against the real server: idle consumers that hold nothing leave their groups,
a consumer that still holds entries never does (they must be claimed), live workers' consumers
stay, and workers whose heartbeat is long gone leave the registry."""

from __future__ import annotations

import time

import redis

from queueing.connection import connect_async
from queueing.housekeeping import (
    Swept,
    default_idle_s,
    live_workers,
    prune_workers,
    remove_idle_consumers,
    sweep,
)
from queueing.keys import Keys
from queueing.message import dumps
from queueing.settings import Settings
from queueing.streams import StageQueue

from .helpers import register, run

STAGE = "echo.run"
IDLE_S = 0.3


def _consumers(r: redis.Redis, stream: str, group: str = STAGE) -> dict[str, int]:
    """Consumer name -> pending entries."""
    return {c["name"].decode(): int(c["pending"]) for c in r.xinfo_consumers(stream, group)}


def _beat(r: redis.Redis, settings: Settings, name: str, at: float) -> None:
    keys = Keys(settings.prefix)
    r.zadd(keys.workers, {name: at})
    r.hset(keys.worker_info, name, dumps({"stages": [STAGE]}))


def _remove(settings: Settings, stages: list[str], idle_s: float) -> list[tuple[str, str]]:
    async def go() -> list[tuple[str, str]]:
        client = connect_async(settings)
        try:
            return await remove_idle_consumers(client, settings, stages, idle_s=idle_s)
        finally:
            await client.aclose()

    return run(go())


def test_only_idle_consumers_that_hold_nothing_and_are_not_live_are_removed(
    settings: Settings, redis_client: redis.Redis
) -> None:
    register(redis_client, settings)
    stream = Keys(settings.prefix).stream(0, STAGE)
    for i in range(2):
        redis_client.xadd(stream, {"n": str(i)})
    redis_client.xgroup_createconsumer(stream, STAGE, "gone-idle")  # restarted: holds nothing
    redis_client.xgroup_createconsumer(stream, STAGE, "live-idle")  # idle, but heart-beating
    redis_client.xreadgroup(STAGE, "gone-holding", {stream: ">"}, count=1)  # SIGKILLed mid-batch
    [[_, [(entry_id, _)]]] = redis_client.xreadgroup(STAGE, "read-acked", {stream: ">"}, count=1)
    redis_client.xack(stream, STAGE, entry_id)  # finished its batch, then stopped
    time.sleep(IDLE_S + 0.1)
    redis_client.xgroup_createconsumer(stream, STAGE, "young")  # just started
    _beat(redis_client, settings, "live-idle", time.time())

    removed = _remove(settings, [STAGE], idle_s=IDLE_S)

    assert sorted(removed) == [(STAGE, "gone-idle"), (STAGE, "read-acked")]
    assert _consumers(redis_client, stream) == {"gone-holding": 1, "live-idle": 0, "young": 0}


def test_a_dead_consumers_entries_are_claimed_first_then_it_goes(
    settings: Settings, redis_client: redis.Redis
) -> None:
    register(redis_client, settings)
    stream = Keys(settings.prefix).stream(0, STAGE)
    redis_client.xadd(stream, {"n": "1"})
    redis_client.xreadgroup(STAGE, "dead", {stream: ">"})
    time.sleep(IDLE_S + 0.1)
    assert _remove(settings, [STAGE], idle_s=IDLE_S) == []  # it holds an entry
    assert _consumers(redis_client, stream) == {"dead": 1}

    redis_client.xclaim(stream, STAGE, "alive", 0, [redis_client.xrange(stream)[0][0]])
    time.sleep(IDLE_S + 0.1)
    _beat(redis_client, settings, "alive", time.time())
    assert _remove(settings, [STAGE], idle_s=IDLE_S) == [(STAGE, "dead")]
    assert _consumers(redis_client, stream) == {"alive": 1}


def test_every_partition_is_swept_and_a_stage_without_a_stream_is_fine(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.replace(partitions=2)
    register(redis_client, settings)
    keys = Keys(settings.prefix)
    for partition in range(2):
        redis_client.xgroup_createconsumer(keys.stream(partition, STAGE), STAGE, "old")
    time.sleep(IDLE_S + 0.1)
    removed = _remove(settings, [STAGE, "never.created"], idle_s=IDLE_S)
    assert removed == [(STAGE, "old"), (STAGE, "old")]
    for partition in range(2):
        assert _consumers(redis_client, keys.stream(partition, STAGE)) == {}


def test_a_stage_queue_reader_is_a_consumer_the_sweep_can_remove(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The consumers the sweep sees are the ones StageQueue.read creates (by consumer name).
    (The read gets an entry: Redis before 7.2 creates no consumer for a read that gets none.)"""
    register(redis_client, settings)
    stream = Keys(settings.prefix).stream(0, STAGE)
    redis_client.xadd(stream, {"x": "1"})

    async def read_once() -> None:
        client = connect_async(settings)
        try:
            (delivery,) = await StageQueue(client, settings, STAGE, "host-123").read(1, None)
            await client.xack(stream, Keys.group(STAGE), delivery.entry_id)
        finally:
            await client.aclose()

    run(read_once())
    assert _consumers(redis_client, stream) == {"host-123": 0}
    time.sleep(IDLE_S + 0.1)
    assert _remove(settings, [STAGE], idle_s=IDLE_S) == [(STAGE, "host-123")]


def test_workers_whose_heartbeat_is_long_gone_leave_the_registry(
    settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    now = time.time()
    _beat(redis_client, settings, "killed-long-ago", now - 3600)
    _beat(redis_client, settings, "killed-just-now", now - 2 * settings.visibility_timeout_s)
    _beat(redis_client, settings, "alive", now)

    async def go() -> tuple[list[str], set[str]]:
        client = connect_async(settings)
        try:
            pruned = await prune_workers(client, settings, gone_s=60)
            return pruned, await live_workers(client, settings)
        finally:
            await client.aclose()

    pruned, live = run(go())
    assert pruned == ["killed-long-ago"]
    assert live == {"alive"}
    assert {m.decode() for m in redis_client.zrange(keys.workers, 0, -1)} == {
        "killed-just-now",
        "alive",
    }
    assert set(redis_client.hkeys(keys.worker_info)) == {b"killed-just-now", b"alive"}


def test_sweep_does_both_with_thresholds_from_the_visibility_timeout(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.replace(visibility_timeout_s=0.05)
    assert default_idle_s(settings) == 0.5
    register(redis_client, settings)
    stream = Keys(settings.prefix).stream(0, STAGE)
    redis_client.xgroup_createconsumer(stream, STAGE, "w1")
    _beat(redis_client, settings, "w1", time.time())
    time.sleep(0.6)

    async def go() -> Swept:
        client = connect_async(settings)
        try:
            return await sweep(client, settings, [STAGE])
        finally:
            await client.aclose()

    swept = run(go())
    assert swept.workers == ["w1"]
    assert swept.consumers == [(STAGE, "w1")]
    assert redis_client.zcard(Keys(settings.prefix).workers) == 0
    assert _consumers(redis_client, stream) == {}
