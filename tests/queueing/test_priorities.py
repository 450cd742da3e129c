"""Priority lanes in the queue layer: how batches are shared among lanes, where a submit with a
priority lands, backpressure per lane, and a lane's job surviving the orphan check."""

from __future__ import annotations

import collections
import time

import pytest
import redis

from queueing.client import Client
from queueing.connection import connect_async
from queueing.deadletter import DeadLetters, Requeue
from queueing.errors import QueueFull
from queueing.jobs import JobStatus
from queueing.keys import Keys
from queueing.lanes import LaneShares, check_lane, check_weights
from queueing.live_config import BadSetting, parse_pairs
from queueing.scripts import Kind
from queueing.settings import Settings
from queueing.streams import Outcome
from tests.queueing.helpers import job_keys, job_of, read_all, register, run, stage_queue


def _served(waiting: dict[str, int], weights: tuple[int, int, int], slots: int, batches: int):
    shares = LaneShares()
    served: collections.Counter[str] = collections.Counter()
    for _ in range(batches):
        lanes = shares.order(waiting, weights, slots)
        shares.charge(waiting, weights, len(lanes))  # (every slot taken)
        served.update(lanes)
    return served


def test_a_batch_is_shared_by_weight_among_the_lanes_that_wait() -> None:
    # Batches of 9, both lanes flooded: 8 high, 1 low each (weights 8 and 1 of 9).
    assert _served({"high": 10**6, "low": 10**6}, (8, 4, 1), 9, 100) == {"high": 800, "low": 100}
    # All three: shares 8/13, 4/13, 1/13 over many batches (even of one item each).
    served = _served({"high": 10**6, "normal": 10**6, "low": 10**6}, (8, 4, 1), 1, 1300)
    assert served["low"] >= 95, served
    assert served["normal"] >= 390, served
    # A lone lane gets every slot; a lane with fewer waiting leaves its slots to the others.
    assert LaneShares().order({"low": 50}, (8, 4, 1), 32) == ["low"] * 32
    lanes = LaneShares().order({"high": 2, "low": 50}, (8, 4, 1), 32)
    assert lanes.count("high") == 2
    assert len(lanes) == 32


def test_lane_names_and_weights_are_checked() -> None:
    assert check_lane(None) == "normal"
    assert check_lane("high") == "high"
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        check_lane("urgent")
    assert check_weights("8, 4, 1") == (8, 4, 1)
    assert check_weights([2, 2, 2]) == (2, 2, 2)
    for bad in ("8,4", "8,4,0", [1.5, 1, 1], "a,b,c", [True, 1, 1]):
        with pytest.raises(ValueError, match="lane_weights"):
            check_weights(bad)
    assert parse_pairs(["lane_weights=1,1,8"]) == {"lane_weights": [1, 1, 8]}
    with pytest.raises(BadSetting, match="lane_weights"):
        parse_pairs(["lane_weights=1,1"])


def test_a_submit_lands_in_its_lane_and_its_record_keeps_the_lane(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    keys = Keys()
    with Client(settings) as client:
        high = client.submit("echo", 1, priority="high")
        low = client.submit_many("echo", [2, 3], priority="low")
        normal = client.submit("echo", 4)
        with pytest.raises(ValueError, match="unknown priority"):
            client.submit("echo", 5, priority="urgent")
        assert (high.info().priority, low[1].info().priority) == ("high", "low")
        assert normal.info().priority == "normal"
    assert redis_client.xlen(keys.stream(0, "echo.run", "high")) == 1
    assert redis_client.xlen(keys.stream(0, "echo.run", "low")) == 2
    assert redis_client.xlen(keys.stream(0, "echo.run")) == 1  # normal: the stream of old
    assert keys.stream(0, "echo.run") == "bl:{0}:in:echo.run"
    assert redis_client.hget(keys.job(high.id), "lane") == b"high"
    assert redis_client.hget(keys.job(low[0].id), "lane") == b"low"
    assert redis_client.hget(keys.job(normal.id), "lane") is None  # (the usual record)


def test_the_backlog_limit_holds_per_lane(redis_client: redis.Redis, settings: Settings) -> None:
    register(redis_client, settings, "small", max_backlog=2)
    with Client(settings) as client:
        client.submit_many("small", [1, 2], priority="low")
        with pytest.raises(QueueFull) as info:
            client.submit("small", 3, priority="low")
        assert (info.value.lane, info.value.backlog, info.value.limit) == ("low", 2, 2)
        assert "lane 'low'" in str(info.value)
        assert len(job_keys(redis_client, settings)) == 2  # nothing half-written
        # The other lanes have room of their own.
        client.submit_many("small", [4, 5], priority="high")
        client.submit_many("small", [6, 7])
        with pytest.raises(QueueFull) as normal_full:
            client.submit("small", 8)
        assert normal_full.value.lane == "normal"
        assert "lane" not in str(normal_full.value)


def test_a_queued_high_job_is_not_taken_for_an_orphan(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Waiters check a job live past the visibility timeout for a deleted stream entry: the
    check looks in the job's own lane (in the normal one, it would fail the job)."""
    register(redis_client, settings)
    with Client(settings) as client:
        job = client.submit("echo", 1, priority="high")
        time.sleep(settings.visibility_timeout_s + 0.1)
        assert client.recheck([job.id]) == []
        assert job.status() == JobStatus.QUEUED


def test_a_dead_letter_of_the_high_lane_is_requeued_into_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    keys = Keys()
    with Client(settings) as client:
        job = client.submit("echo", 1, priority="high")

    async def dead_letter_then_requeue() -> Requeue:
        async with stage_queue(settings, "echo.run") as queue:
            (delivery,) = await read_all(queue, 1)
            assert delivery.lane == "high"
            dead = Outcome(delivery, job_of(delivery), Kind.DEAD, "bad")
            assert await queue.finish([dead]) == [True]
        client = connect_async(settings)
        try:
            letters = DeadLetters(client, settings)
            letter = await letters.find(job.id)
            assert letter is not None
            return (await letters.requeue(letter)).outcome
        finally:
            await client.aclose()

    assert run(dead_letter_then_requeue()) == Requeue.REQUEUED
    assert redis_client.xlen(keys.stream(0, "echo.run", "high")) == 1
    assert redis_client.xlen(keys.stream(0, "echo.run")) == 0
