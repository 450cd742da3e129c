"""The per-stage activity workers publish for the dashboard, through a real server: what one
heartbeat's entry holds, how entries fold into rates, batch sizes and percentiles, and that the
stream stays bounded."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from queueing.connection import connect_async
from queueing.keys import Keys
from queueing.message import loads
from queueing.settings import Settings
from queueing.stagestats import SAMPLE_CAP, STREAM_CAP, StageRecorder, read_recent

STAGE = "p.model"
KEYS = Keys()


def publish(settings: Settings, recorder: StageRecorder, heartbeats: int = 1) -> None:
    """``heartbeats`` times: a batch of one noted (after the first), then a publish."""

    async def go() -> None:
        client = connect_async(settings)
        try:
            for beat in range(heartbeats):
                if beat:
                    recorder.record(1, 0.01, 0.0, 0.0)
                await recorder.publish(client, KEYS)
        finally:
            await client.aclose()

    asyncio.run(go())


def recent(settings: Settings, **options: float) -> dict[str, object]:
    async def go() -> dict[str, object]:
        client = connect_async(settings)
        try:
            return (await read_recent(client, KEYS, [STAGE], **options))[STAGE].to_dict()
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_heartbeat_entry_folds_into_sizes_rates_and_percentiles(
    settings: Settings, redis_client: redis.Redis
) -> None:
    recorder = StageRecorder(STAGE, since=time.time() - 2)
    publish(settings, recorder)
    assert redis_client.exists(KEYS.stage_stats(STAGE)) == 0, "nothing ran: nothing published"

    for i in range(30):  # queue waits 0.0, 0.1 ... 2.9 s; compute 10 ms, one 50 ms
        recorder.record(1, 0.05 if i == 29 else 0.01, i / 10, i / 10)
    recorder.record(4, 0.01, 0.0, 0.0)
    publish(settings, recorder)
    assert recorder.batches == 0, "reset once published"

    view = recent(settings, window_s=60, bucket_s=5)
    assert view["items"] == 34
    assert view["batches"] == 31
    assert view["batch_sizes"] == [[1, 30], [4, 1]]
    rates = view["items_per_s"]
    assert isinstance(rates, list)
    assert len(rates) == 12
    assert sum(rates) * 5 == pytest.approx(34)
    assert view["compute_s"] == {"p50": 0.01, "p99": 0.05}
    waits = view["queue_wait_s"]
    assert isinstance(waits, dict)
    assert waits["p50"] == pytest.approx(1.2)  # (the batch of 4 at 0 s counts 4 items)
    assert waits["p99"] == pytest.approx(2.9)


def test_the_stream_and_its_entries_stay_bounded(
    settings: Settings, redis_client: redis.Redis
) -> None:
    recorder = StageRecorder(STAGE)
    for _ in range(10 * SAMPLE_CAP):
        recorder.record(8, 0.01, 0.2, 0.1)
    publish(settings, recorder)
    ((_, fields),) = redis_client.xrange(KEYS.stage_stats(STAGE))
    assert len(loads(fields[b"samples"])) == SAMPLE_CAP
    assert int(fields[b"batches"]) == 10 * SAMPLE_CAP

    publish(settings, recorder, heartbeats=STREAM_CAP + 500)
    assert redis_client.xlen(KEYS.stage_stats(STAGE)) < STREAM_CAP * 1.1
