"""Composed pipelines through real workers: a two-stage chain (in one process or in two) and a
router that sends some items on to another stage and answers others itself."""

from __future__ import annotations

import pytest
import redis

from queueing.client import Client
from queueing.errors import JobExpired, JobFailed
from queueing.settings import Settings
from tests.pipelines import t_chain, t_route
from tests.support import Workers
from tests.workers.support import assert_drained, register, seen, wait_finished

CHAIN = ["t_chain.first", "t_chain.second"]


@pytest.mark.parametrize("layout", ["one-process", "one-per-stage"])
def test_a_chain_runs_each_stage_in_order(
    layout: str,
    settings: Settings,
    client: Client,
    workers: Workers,
    redis_client: redis.Redis,
) -> None:
    register(settings, t_chain)
    if layout == "one-process":
        workers.start("t_chain")
    else:
        workers.start("t_chain.second")
        workers.start("t_chain.first")
    jobs = client.submit_many("t_chain", [{"x": i} for i in range(10)])
    records = wait_finished(jobs, 30)

    assert [r.result for r in records] == [(i + 1) * 10 for i in range(10)]
    for record in records:
        assert [t.stage for t in record.timings] == CHAIN
        assert record.timings[0].batch_size <= 4  # the first stage's max_batch_size
    assert sorted(seen(redis_client, "t_chain.first")) == list(range(10))
    assert sorted(seen(redis_client, "t_chain.second")) == list(range(1, 11))
    assert_drained(redis_client, CHAIN)


def test_a_deadline_is_checked_again_at_the_next_stage(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """The first stage starts the job in time but takes 2 s; the deadline (1 s) passes before
    the second stage gets it, so the second stage's model never sees it."""
    register(settings, t_chain)
    workers.start("t_chain")
    warm = client.submit("t_chain", {"x": 0})
    assert warm.result(timeout=20) == 10

    slow = client.submit("t_chain", {"x": 5, "sleep": 2.0}, timeout_s=1.0)
    with pytest.raises(JobExpired):
        slow.result(timeout=20)
    assert 5 in seen(redis_client, "t_chain.first")
    assert 6 not in seen(redis_client, "t_chain.second"), "an expired item reached the model"
    assert [t.stage for t in slow.info().timings] == ["t_chain.first"]
    assert_drained(redis_client, CHAIN)


def test_a_router_sends_some_items_on_and_answers_others(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_route)
    workers.start("t_route.heavy")
    workers.start("t_route.router")
    jobs = client.submit_many("t_route", [{"x": i} for i in range(8)])
    full_name = client.submit("t_route", {"x": 100, "to": "t_route.heavy"})
    records = wait_finished([*jobs, full_name], 30)

    for i, record in enumerate(records[:8]):
        if i % 2:
            assert record.result == {"by": "heavy", "x": i}
            assert [t.stage for t in record.timings] == ["t_route.router", "t_route.heavy"]
        else:
            assert record.result == {"by": "router", "x": i}
            assert [t.stage for t in record.timings] == ["t_route.router"]
    assert records[8].result == {"by": "heavy", "x": 100}
    assert sorted(seen(redis_client, "t_route.heavy")) == [1, 3, 5, 7, 100]
    assert_drained(redis_client, ["t_route.router", "t_route.heavy"])


def test_a_route_to_an_unknown_stage_fails_that_item_only(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_route)
    jobs = client.submit_many("t_route", [{"x": 1}, {"x": 2, "to": "nowhere"}, {"x": 3}])
    workers.start("t_route")
    with pytest.raises(JobFailed) as failed:
        jobs[1].result(timeout=20)
    assert failed.value.stage == "t_route.router"
    assert "'nowhere'" in failed.value.error
    assert "not among its routes" in failed.value.error
    assert jobs[0].result(timeout=20) == {"by": "heavy", "x": 1}
    assert jobs[2].result(timeout=20) == {"by": "heavy", "x": 3}
    assert 2 not in seen(redis_client, "t_route.heavy")
    assert_drained(redis_client, ["t_route.router", "t_route.heavy"])
