"""queueing.registry.publish: the registry write and the consumer groups, in the queue layer
(workers and the CLI call it; neither touches Redis itself)."""

from __future__ import annotations

import redis

from queueing.connection import connect_async
from queueing.keys import Keys
from queueing.registry import PipelineSpec, StageSpec, parse_registry, publish
from queueing.settings import Settings

from .helpers import run

SPECS = [
    PipelineSpec("alpha", (StageSpec("alpha.a", next=("alpha.b",)), StageSpec("alpha.b"))),
    PipelineSpec("beta", (StageSpec("beta.only", max_batch_size=4),)),
]


def _publish(settings: Settings, specs: list[PipelineSpec]) -> None:
    async def go() -> None:
        client = connect_async(settings)
        try:
            await publish(client, settings, specs)
        finally:
            await client.aclose()

    run(go())


def test_publish_writes_the_specs_and_creates_every_partitions_group(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.replace(partitions=3)
    keys = Keys(settings.prefix)
    _publish(settings, SPECS)
    assert parse_registry(redis_client.hgetall(keys.registry)) == {s.name: s for s in SPECS}
    for stage in ("alpha.a", "alpha.b", "beta.only"):
        for partition in range(3):
            groups = redis_client.xinfo_groups(keys.stream(partition, stage))
            assert [g["name"] for g in groups] == [stage.encode()]


def test_publishing_again_keeps_the_groups_and_what_they_hold(
    settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    _publish(settings, SPECS)
    stream = keys.stream(0, "beta.only")
    redis_client.xadd(stream, {"x": "1"})
    redis_client.xreadgroup("beta.only", "c1", {stream: ">"})
    _publish(settings, SPECS)
    assert redis_client.xpending(stream, "beta.only")["pending"] == 1


def test_publishing_nothing_writes_nothing(settings: Settings, redis_client: redis.Redis) -> None:
    _publish(settings, [])
    assert redis_client.dbsize() == 0
