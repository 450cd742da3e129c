"""Priority lanes through real worker processes: a high job overtakes a low backlog, the low
lane keeps its weighted share under a high flood, a job keeps its lane from stage to stage, a
killed worker's high-lane entries are claimed and end once, and lane weights change live.

Orders, not times: what the model saw (``test:seen:<stage>``, in order) says which ran first."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis

from pipelines.dsl import Pipeline
from queueing.client import Client
from queueing.connection import connect_async
from queueing.jobs import JobStatus
from queueing.settings import Settings
from queueing.streams import StageQueue
from tests.pipelines import t_chain
from tests.support import Workers
from tests.workers.batching_pipelines import t_prio, t_prio1
from tests.workers.support import (
    KEYS,
    assert_drained,
    batchline_config,
    register,
    seen,
    stat,
    wait_exit,
    wait_finished,
    wait_until,
)
from workers.loop import StageLoop

STAGE = "t_prio.model"
PIPELINES = ("tests.workers.batching_pipelines",)
LOW = 1000
"""Low-lane items' ``x`` start here (high ones' at 0)."""


def _lane_backlog(r: redis.Redis, stage: str, lane: str) -> tuple[int, int]:
    stream = KEYS.stream(0, stage, lane)
    if not r.exists(stream):
        return 0, 0
    return int(r.xlen(stream)), int(r.xpending(stream, stage)["pending"])


def _assert_lanes_drained(r: redis.Redis, stages: list[str]) -> None:
    assert_drained(r, stages)
    for stage in stages:
        for lane in ("high", "low"):
            assert _lane_backlog(r, stage, lane) == (0, 0), f"{stage} {lane} after the run"


def _flood(
    pipeline: Pipeline,
    high: int,
    low: int,
    settings: Settings,
    client: Client,
    workers: Workers,
    r: redis.Redis,
    **extra: Any,
) -> list[int]:
    """``high`` high jobs and ``low`` low ones (each input ``{"x": ..., **extra}``) queued,
    then run by one burst worker: every job done, each run once, the high lane drained before
    the low one. The ``x`` the model saw, in order."""
    stage = f"{pipeline.name}.model"
    register(settings, pipeline)
    jobs = client.submit_many(
        pipeline.name, [{"x": i, **extra} for i in range(high)], priority="high"
    )
    jobs += client.submit_many(
        pipeline.name, [{"x": LOW + i, **extra} for i in range(low)], priority="low"
    )
    assert wait_exit(workers.start(stage, burst=True, settings=settings), 60) == 0
    records = wait_finished(jobs, 10)
    assert [record.status for record in records] == [JobStatus.DONE] * (high + low)
    order = seen(r, stage)
    assert sorted(order) == [*range(high), *range(LOW, LOW + low)], "each job ran once"
    last_high = max(i for i, x in enumerate(order) if x < LOW)
    last_low = max(i for i, x in enumerate(order) if x >= LOW)
    assert last_high < last_low, "the high lane drained first"
    _assert_lanes_drained(r, [stage])
    return order


def test_a_high_job_overtakes_a_low_backlog(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """90 low jobs (ten batches of 9, 50 ms each) wait; once the first batch runs, a high job
    comes: it runs in one of the next batches, not after the backlog."""
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_prio)
    low = client.submit_many(
        "t_prio", [{"x": LOW + i, "sleep": 0.05} for i in range(90)], priority="low"
    )
    workers.start(STAGE, settings=settings)
    wait_until(lambda: seen(redis_client, STAGE), 20, "the first batch never ran")
    high = client.submit("t_prio", {"x": 0}, priority="high")
    assert high.result(timeout=30) == {"x": 0}
    assert [r.status for r in wait_finished(low, 30)] == [JobStatus.DONE] * 90
    order = seen(redis_client, STAGE)
    assert sorted(order) == [0, *range(LOW, LOW + 90)], "each job ran once"
    # (it came during the first batch: the batch in hand, the one read ahead, then its own)
    assert order.index(0) < 4 * 9, f"the high job ran after {order.index(0)} low ones"
    assert stat(redis_client, STAGE, "done") == 91
    _assert_lanes_drained(redis_client, [STAGE])


def test_the_low_lane_keeps_its_share_under_a_high_flood(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """180 high and 30 low jobs wait; with weights 8/4/1 and batches of 9, each batch takes 8
    high and 1 low while both wait: the low lane is not starved, the high one goes first."""
    settings = settings.replace(pipelines=PIPELINES)
    order = _flood(t_prio, 180, 30, settings, client, workers, redis_client)
    lows_early = sum(x >= LOW for x in order[:90])
    # 1 in 9 by the weights: 10 of the first 90 (the bound, not FIFO: 0; no priority: 30).
    assert 5 <= lows_early <= 20, f"{lows_early} low jobs among the first 90 run"


def test_the_low_lane_keeps_its_share_in_batches_of_one(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """Batches of one item under a high flood: each waits in the inbox while the one before
    runs (10 ms), so it is refreshed before it runs; charged once all the same, the low lane
    gets 1 slot in 9 while both wait (before: refreshes starved it, 0 of the first 45)."""
    settings = settings.replace(pipelines=PIPELINES)
    order = _flood(t_prio1, 90, 20, settings, client, workers, redis_client, sleep=0.01)
    lows_early = sum(x >= LOW for x in order[:45])
    # 1 in 9 by the weights: 5 of the first 45 (starved, or first come first served: 0).
    assert 3 <= lows_early <= 8, f"{lows_early} low jobs among the first 45 run"


def test_displaced_entries_run_while_the_read_loop_blocks(
    settings: Settings, client: Client
) -> None:
    """Entries a refresh displaced into the carry while the read loop waits in XREADGROUP
    BLOCK (which cannot see them): the model takes them at once, not after block_ms (60 s
    here; before the fix the model idled until the read returned)."""
    settings = settings.replace(pipelines=PIPELINES, block_ms=60_000)
    register(settings, t_prio)
    stage = t_prio.compile().stages[STAGE]
    client.submit_many("t_prio", [{"x": LOW + i} for i in range(3)], priority="low")

    async def go() -> None:
        redis_async = connect_async(settings)
        queue = StageQueue(redis_async, settings, STAGE, "c1")
        loop = StageLoop(stage, stage.load("cpu"), queue, settings)
        try:
            displaced = await queue.read(9, None)
            assert len(displaced) == 3
            reading = asyncio.create_task(loop.read_batch())
            for _ in range(3000):  # (until it waits in XREADGROUP BLOCK: at once)
                if loop.former.blocked:
                    break
                await asyncio.sleep(0.01)
            assert loop.former.blocked
            loop.held.update((d.key, d) for d in displaced)
            loop.former.carry = displaced  # (as refresh leaves them)
            batch = await asyncio.wait_for(loop._next(), 30)
            assert batch is not None
            assert [d.key for d in batch.deliveries] == [d.key for d in displaced]
            assert loop.former.carry == []
            await asyncio.to_thread(client.submit, "t_prio", {"x": 0}, priority="high")
            assert len(await asyncio.wait_for(reading, 30)) == 1
        finally:
            loop._executor.shutdown(wait=False)
            await redis_async.aclose()

    asyncio.run(go())


def test_a_job_keeps_its_lane_from_stage_to_stage(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_chain)
    jobs = client.submit_many("t_chain", [{"x": i} for i in range(5)], priority="high")
    assert _lane_backlog(redis_client, "t_chain.first", "high")[0] == 5
    assert wait_exit(workers.start("t_chain.first", burst=True), 30) == 0
    # The first stage handed them on to the second stage's high lane (its normal one is empty).
    assert _lane_backlog(redis_client, "t_chain.second", "high") == (5, 0)
    assert redis_client.xlen(KEYS.stream(0, "t_chain.second")) == 0
    assert wait_exit(workers.start("t_chain.second", burst=True), 30) == 0
    records = wait_finished(jobs, 10)
    assert [r.result for r in records] == [(i + 1) * 10 for i in range(5)]
    _assert_lanes_drained(redis_client, ["t_chain.first", "t_chain.second"])


def test_a_killed_workers_high_lane_entries_are_claimed_and_end_once(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_prio)
    n = 12  # a batch of 9 in the model, 3 more read ahead
    jobs = client.submit_many("t_prio", [{"x": i, "sleep": 1.0} for i in range(n)], priority="high")
    first = workers.start(STAGE, settings=settings)
    wait_until(lambda: seen(redis_client, STAGE), 20, "the first worker never started a batch")
    first.kill()  # SIGKILL while the model holds a batch of high-lane entries
    assert first.wait(10) == -signal.SIGKILL
    assert _lane_backlog(redis_client, STAGE, "high")[1] > 0, "it held no high-lane entry"

    workers.start(STAGE, settings=settings)
    records = wait_finished(jobs, 30)
    assert [r.status for r in records] == [JobStatus.DONE] * n
    assert sorted(set(seen(redis_client, STAGE))) == list(range(n))
    assert stat(redis_client, STAGE, "done") == n, "a result was published more than once"
    assert stat(redis_client, STAGE, "redelivered") >= 9
    _assert_lanes_drained(redis_client, [STAGE])


def test_a_running_worker_applies_new_lane_weights(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """Weights 1/1/8 favour the low lane: once the running worker has them, low jobs queued
    behind a busy batch take most of the next batches (with 8/4/1, high ones would)."""
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_prio)
    workers.start(STAGE, settings=settings)
    done = batchline_config(settings, "set", STAGE, "lane_weights=1,1,8")
    assert done.returncode == 0, done.stderr
    assert "lane_weights:         1,1,8" in done.stdout
    [spec] = client.pipelines()["t_prio"].stages
    assert spec.lane_weights == (1, 1, 8)
    assert batchline_config(settings, "set", STAGE, "lane_weights=1,0,8").returncode != 0

    rounds = iter(range(100))

    def low_lane_favoured() -> bool:
        base = next(rounds) * 10_000
        blocker = client.submit("t_prio", {"x": base + 5000, "sleep": 0.3}, priority="high")
        wait_until(lambda: base + 5000 in seen(redis_client, STAGE), 20, "the blocker ran")
        low = client.submit_many(
            "t_prio", [{"x": base + LOW + i} for i in range(36)], priority="low"
        )
        high = client.submit_many("t_prio", [{"x": base + i} for i in range(36)], priority="high")
        wait_finished([blocker, *low, *high], 30)
        order = [x for x in seen(redis_client, STAGE) if base <= x < base + 5000]
        return sum(x >= base + LOW for x in order[:27]) > 18

    wait_until(low_lane_favoured, 20, "the running worker to favour the low lane")
