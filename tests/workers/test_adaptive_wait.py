"""The adaptive wait (``batch_wait_timeout_s="auto"``): its cost fit, its arrival rate and its
rule, on a synthetic clock (deterministic); then a real worker serving an adaptive stage."""

from __future__ import annotations

import asyncio

import pytest
import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.support import Workers
from tests.workers.batching_pipelines import t_auto
from tests.workers.support import assert_drained, batches, register, wait_finished
from workers.adaptive import AUTO_CAP_S, AdaptiveWait, ArrivalRate, CostModel
from workers.batching import BatchConfig, batch

STAGE = "t_auto.model"


def test_the_cost_fit_splits_fixed_and_per_item_costs() -> None:
    model = CostModel()
    for n in [1, 4, 16, 2, 8, 32, 3, 1, 12] * 3:
        model.observe(n, 0.004 + 0.0005 * n)
    assert model.fixed == pytest.approx(0.004, rel=1e-6)
    assert model.per_item == pytest.approx(0.0005, rel=1e-6)
    # It follows a change: the per-item cost doubles; recent batches count most.
    for n in [1, 4, 16, 2, 8, 32, 3, 1, 12] * 20:
        model.observe(n, 0.004 + 0.001 * n)
    assert model.per_item == pytest.approx(0.001, rel=0.05)


def test_one_batch_size_charges_everything_as_fixed() -> None:
    model = CostModel()
    for _ in range(10):
        model.observe(1, 0.003)
    assert (model.fixed, model.per_item) == (pytest.approx(0.003), 0.0)


def test_the_arrival_rate_follows_a_step_within_a_second() -> None:
    rate = ArrivalRate()
    t = 0.0
    for _ in range(1000):  # 1000 items/s
        t += 0.001
        rate.arrived(1, t)
    assert rate.rate(t) == pytest.approx(1000, rel=0.05)
    for _ in range(5000):  # then 10,000/s for half a second
        t += 0.0001
        rate.arrived(1, t)
    assert rate.rate(t) == pytest.approx(10_000, rel=0.1)
    assert rate.rate(t + 1.0) < 10, "an idle second brings it down"


def _warm(wait: AdaptiveWait, fixed: float, per_item: float) -> None:
    for n in (1, 8, 2, 16, 4, 32):
        wait.observe(n, fixed + per_item * n)


def test_waiting_pays_only_under_load() -> None:
    wait = AdaptiveWait()
    _warm(wait, fixed=0.010, per_item=0.0001)
    # Light load: one item every 20 ms. Waiting would delay it and gain nothing.
    t = 0.0
    for _ in range(50):
        t += 0.020
        wait.arrived(1, t)
    assert wait.wait_left(1, 0.0, t) == 0.0
    # Heavy load: 20,000 items/s. Four in hand: wait, but never more than the fixed cost.
    for _ in range(4000):
        t += 0.00005
        wait.arrived(1, t)
    left = wait.wait_left(4, 0.0, t)
    assert 0.0 < left <= 0.010
    assert wait.wait_left(4, 0.010, t) == 0.0, "the oldest item waited a fixed cost already"
    assert wait.wait_left(200, 0.0, t) == 0.0, "enough items in hand: run"
    assert left <= AUTO_CAP_S


def test_the_latency_budget_bounds_the_wait() -> None:
    wait = AdaptiveWait(max_latency_ms=12)
    _warm(wait, fixed=0.010, per_item=0.0001)
    t = 0.0
    for _ in range(4000):
        t += 0.00005
        wait.arrived(1, t)
    # 12 ms budget - 10.4 ms expected cost of 4 items: 1.6 ms at most.
    assert wait.wait_left(4, 0.0, t) == pytest.approx(0.0016, abs=1e-4)
    assert wait.wait_left(4, 0.002, t) == 0.0


def test_before_warm_up_it_does_not_wait() -> None:
    wait = AdaptiveWait()
    wait.arrived(100, 0.0)
    assert wait.wait_left(1, 0.0, 0.0) == 0.0


def test_auto_is_accepted_in_process_and_refused_misspelt() -> None:
    assert BatchConfig(batch_wait_timeout_s="auto").adaptive
    with pytest.raises(ValueError, match="batch_wait_timeout_s"):
        BatchConfig(batch_wait_timeout_s="soon")
    calls: list[int] = []

    @batch(max_batch_size=8, batch_wait_timeout_s="auto")
    async def handler(items: list[int]) -> list[int]:
        calls.append(len(items))
        return items

    async def main() -> list[int]:
        return await asyncio.gather(*(handler(i) for i in range(20)))

    assert asyncio.run(main()) == list(range(20))
    assert calls == [8, 8, 4]


def test_a_worker_serves_an_adaptive_stage(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    settings = settings.replace(pipelines=("tests.workers.batching_pipelines",))
    register(settings, t_auto)
    [spec] = client.pipeline("t_auto").stages
    assert (spec.batch_wait_timeout_s, spec.max_latency_ms) == ("auto", 50)
    workers.start(STAGE, settings=settings)
    lone = client.submit("t_auto", {"x": -1})
    assert lone.result(timeout=20) == {"x": -1}
    jobs = client.submit_many("t_auto", [{"x": i} for i in range(40)])
    records = wait_finished(jobs, 20)
    assert [r.status for r in records] == [JobStatus.DONE] * 40
    assert sum(batches(redis_client, STAGE)) == 41
    assert max(batches(redis_client, STAGE)) <= 16
    assert_drained(redis_client, [STAGE])


def test_while_the_handler_runs_it_gathers_for_free() -> None:
    wait = AdaptiveWait()
    _warm(wait, fixed=0.010, per_item=0.0001)
    t = 0.0
    for _ in range(50):  # light load: on its own, no wait
        t += 0.020
        wait.arrived(1, t)
    assert wait.wait_left(1, 0.0, t) == 0.0
    wait.running(8, t)  # a batch of 8 runs for about 10.8 ms, another is queued behind it
    assert wait.wait_left(1, 0.0, t + 0.002) == 0.0, "nothing queued: this batch runs next"
    assert wait.wait_left(1, 0.0, t + 0.002, behind=True) == pytest.approx(0.0088, abs=1e-4)
    wait.observe(8, 0.0108)  # it ended: the handler is free
    assert wait.wait_left(1, 0.0, t + 0.011, behind=True) == 0.0
