"""Batches form at every size through real workers: full under load, one under light load, and
partial ones that still run when the wait timeout ends (the stage's read protocol)."""

from __future__ import annotations

import time

import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.pipelines import t_batch, t_wait
from tests.support import Workers
from tests.workers.support import assert_drained, batches, register, seen, wait_exit, wait_finished

STAGE = "t_batch.model"


def test_under_load_batches_reach_max_batch_size(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    jobs = client.submit_many("t_batch", [{"x": i} for i in range(42)])
    # Everything is queued before the worker starts: it takes max_batch_size (8) at a time.
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0
    records = wait_finished(jobs, 10)

    assert [r.status for r in records] == [JobStatus.DONE] * 42
    assert [r.result for r in records] == [{"x": i, "y": 2 * i} for i in range(42)]
    assert sorted(batches(redis_client, STAGE)) == [2, 8, 8, 8, 8, 8]
    sizes = [r.timings[0].batch_size for r in records]
    assert sorted(sizes) == [2, 2] + [8] * 40, "each job's timing names the size of its batch"
    assert all(r.timings[0].stage == STAGE for r in records)
    assert sorted(seen(redis_client, STAGE)) == list(range(42))
    assert_drained(redis_client, [STAGE])


def test_under_light_load_batches_hold_one_item(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    workers.start(STAGE)
    for i in range(4):
        job = client.submit("t_batch", {"x": i})
        assert job.result(timeout=20) == {"x": i, "y": 2 * i}
        assert job.info().timings[0].batch_size == 1
    assert batches(redis_client, STAGE) == [1, 1, 1, 1]
    assert_drained(redis_client, [STAGE])


def test_the_wait_timeout_runs_partial_batches(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """t_wait waits up to 0.5 s for up to 8 items. A lone item still runs; a trickle of six
    items, 50 ms apart, is gathered by the wait, and runs before any batch is full."""
    stage = "t_wait.model"
    register(settings, t_wait)
    workers.start(stage)

    lone = client.submit("t_wait", {"x": 100})
    assert lone.result(timeout=20) == {"x": 100, "y": 200}
    assert lone.info().timings[0].batch_size == 1

    trickle = []
    for i in range(6):
        trickle.append(client.submit("t_wait", {"x": i}))
        time.sleep(0.05)
    records = wait_finished(trickle, 20)
    assert [r.status for r in records] == [JobStatus.DONE] * 6

    sizes = batches(redis_client, stage)[1:]  # after the lone item's batch
    assert sum(sizes) == 6
    assert all(size < 8 for size in sizes), f"batches waited to be full: {sizes}"
    assert max(sizes) > 1, f"the wait gathered nothing: each of the trickle ran alone ({sizes})"
    assert sorted(r.timings[0].batch_size for r in records) == sorted(
        size for size in sizes for _ in range(size)
    )
    assert_drained(redis_client, [stage])
