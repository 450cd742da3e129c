"""Batches bounded by cost (``batch_size_fn``): in-process, as Ray Serve's ``@serve.batch``,
and through real workers, which read up to ``max_batch_items`` entries and carry those past
the bound over to the next batch (held and touched like the others: never lost, never claimed
away)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.support import Workers
from tests.workers.batching_pipelines import COST_BOUND, t_cost
from tests.workers.support import (
    KEYS,
    assert_drained,
    batches,
    register,
    seen,
    stat,
    wait_exit,
    wait_finished,
)
from workers.batching import BatchConfig, batch

STAGE = "t_cost.model"
PIPELINES = ("tests.workers.batching_pipelines",)
COSTS = [3, 4, 5, 20, 1, 1, 9, 2, 6, 4, 11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5]


def _cost_batches(costs: list[int], sizes: list[int]) -> list[list[int]]:
    out, at = [], 0
    for size in sizes:
        out.append(costs[at : at + size])
        at += size
    return out


def _check_bounded(groups: list[list[int]], bound: int) -> None:
    for group in groups:
        assert sum(group) <= bound or len(group) == 1, f"batch {group} is over {bound}"


# -- in-process --------------------------------------------------------------------------------


def test_take_cuts_before_the_item_that_would_pass_the_bound() -> None:
    config = BatchConfig(max_batch_size=10, batch_size_fn=sum)
    assert config.take([3, 4, 5]) == 2
    assert config.take([20, 1]) == 1  # alone over the bound: runs alone
    assert config.take([1] * 300) == 10
    assert config.max_items == 10
    assert BatchConfig(max_batch_size=4096, batch_size_fn=sum).max_items == 256
    assert config.cost_name == "sum"
    assert not BatchConfig(max_batch_size=4).closed([1, 2, 3])
    assert BatchConfig(max_batch_size=4).closed([1, 2, 3, 4])


def test_a_cost_function_that_raises_runs_its_item_alone() -> None:
    config = BatchConfig(max_batch_size=10, batch_size_fn=lambda items: sum(i["n"] for i in items))
    assert config.take([{"n": 1}, {"bad": 1}, {"n": 1}]) == 1


def test_async_calls_are_batched_by_cost() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=10, batch_size_fn=sum, batch_wait_timeout_s=0.05)
    async def handler(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * 2 for i in items]

    async def main() -> list[int]:
        return await asyncio.gather(*(handler(c) for c in COSTS))

    assert asyncio.run(main()) == [c * 2 for c in COSTS]
    assert [c for call in calls for c in call] == COSTS, "every item once, in order"
    _check_bounded(calls, 10)
    assert [20] in calls, "items over the bound run alone"
    assert [11] in calls, "items over the bound run alone"
    assert max(len(call) for call in calls) > 2


def test_threads_are_batched_by_cost() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=10, batch_size_fn=sum, batch_wait_timeout_s=0.05)
    def handler(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    with ThreadPoolExecutor(len(COSTS)) as pool:
        assert list(pool.map(handler, COSTS)) == COSTS
    assert sorted(c for call in calls for c in call) == sorted(COSTS)
    _check_bounded(calls, 10)


# -- through workers ---------------------------------------------------------------------------


def test_a_worker_cuts_batches_at_the_cost_bound_and_carries_the_rest(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_cost)
    inputs: list[dict[str, Any]] = [{"x": i, "n": n} for i, n in enumerate(COSTS)]
    jobs = client.submit_many("t_cost", inputs)
    # Everything is queued before the worker starts: it reads 8 at a time and cuts by cost.
    assert wait_exit(workers.start(STAGE, burst=True, settings=settings), 30) == 0
    records = wait_finished(jobs, 10)

    assert [r.status for r in records] == [JobStatus.DONE] * len(COSTS)
    assert [r.result for r in records] == inputs
    assert seen(redis_client, STAGE) == list(range(len(COSTS))), "once each, in order"
    groups = _cost_batches(COSTS, batches(redis_client, STAGE))
    _check_bounded(groups, COST_BOUND)
    assert [20] in groups
    assert [11] in groups
    # Cut by cost, not by count: a count bound of 8 would have run 3 batches.
    assert len(groups) > 3
    # The ten items of cost 1 fill a batch to the bound (and no more) in one call.
    assert [1] * 10 in groups or max(len(g) for g in groups) == 8
    assert_drained(redis_client, [STAGE])


def test_carried_entries_are_held_while_they_wait(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """Each item costs the whole bound and takes 0.3 s: a worker reads 8 and carries 7 for
    up to 2.1 s, past the visibility timeout (1.5 s). A second worker claims entries idle that
    long; carried entries are touched by heartbeats, so none is claimed away (re-delivered)."""
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_cost)
    jobs = client.submit_many(
        "t_cost", [{"x": i, "n": COST_BOUND, "sleep": 0.3} for i in range(16)]
    )
    for name in ("a", "b"):
        workers.start(STAGE, burst=True, name=name, settings=settings)
    for process in workers.processes:
        assert wait_exit(process, 30) == 0
    records = wait_finished(jobs, 10)
    assert [r.status for r in records] == [JobStatus.DONE] * 16
    assert batches(redis_client, STAGE) == [1] * 16
    assert sorted(seen(redis_client, STAGE)) == list(range(16)), "each item ran once"
    assert stat(redis_client, STAGE, "redelivered") == 0
    assert_drained(redis_client, [STAGE])


def test_the_registry_names_the_cost_function(settings: Settings, client: Client) -> None:
    register(settings.replace(pipelines=PIPELINES), t_cost)
    [spec] = client.pipeline("t_cost").stages
    assert spec.batch_size_fn == "total_n"
    assert spec.max_batch_size == COST_BOUND
    assert spec.max_batch_items == 8
    assert spec.to_dict()["batch_size_fn"] == "total_n"


@pytest.mark.parametrize("bad", [0, -1])
def test_a_bad_cost_bound_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        batch(max_batch_size=bad, batch_size_fn=sum)


def test_entries_claimed_from_a_dead_consumer_keep_the_cost_bound(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """A consumer that read 12 entries and died (never started them): the live worker claims
    them after the visibility timeout and runs them in batches within the cost bound (two of
    cost 4 each, not one of 8 items)."""
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_cost)
    jobs = client.submit_many("t_cost", [{"x": i, "n": 4} for i in range(12)])
    taken = redis_client.xreadgroup(STAGE, "ghost", {KEYS.stream(0, STAGE): ">"}, count=12)
    assert len(taken[0][1]) == 12
    workers.start(STAGE, name="alive", settings=settings)
    records = wait_finished(jobs, 30)
    assert [r.status for r in records] == [JobStatus.DONE] * 12
    assert sorted(seen(redis_client, STAGE)) == list(range(12))
    assert batches(redis_client, STAGE) == [2] * 6
    assert_drained(redis_client, [STAGE])
