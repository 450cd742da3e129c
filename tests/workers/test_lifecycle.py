"""How a worker process ends: SIGTERM finishes the batches in hand and exits 0; burst mode
drains the streams it serves, then exits 0."""

from __future__ import annotations

import signal

import pytest
import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.pipelines import t_batch, t_chain
from tests.support import Workers
from tests.workers.support import (
    KEYS,
    assert_drained,
    register,
    seen,
    stat,
    wait_exit,
    wait_finished,
    wait_until,
)

STAGE = "t_batch.model"


def test_sigterm_finishes_the_batch_in_hand_then_exits_zero(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    jobs = client.submit_many("t_batch", [{"x": i, "sleep": 2.0} for i in range(3)])
    worker = workers.start(STAGE, name="graceful")
    wait_until(lambda: len(seen(redis_client, STAGE)) == 3, 20, "the batch never started")
    # (a batch of new entries shows its jobs running once it has run RUNNING_AFTER_S)
    running = [JobStatus.RUNNING] * 3
    wait_until(lambda: [job.status() for job in jobs] == running, 5, "never shown running")
    assert redis_client.zscore(KEYS.workers, "graceful") is not None
    worker.send_signal(signal.SIGTERM)
    assert [job.status() for job in jobs] == running, "too late: batch done"

    assert wait_exit(worker, 20) == 0
    # No other worker ran: the results were published by the one that was told to stop.
    records = [job.info() for job in jobs]
    assert [r.status for r in records] == [JobStatus.DONE] * 3
    assert [r.result for r in records] == [{"x": i, "y": 2 * i} for i in range(3)]
    assert seen(redis_client, STAGE) == [0, 1, 2]
    assert_drained(redis_client, [STAGE])
    assert redis_client.zscore(KEYS.workers, "graceful") is None, "it did not retire"


def test_sigterm_leaves_unread_jobs_queued_for_the_next_worker(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    worker = workers.start(STAGE)
    warm = client.submit("t_batch", {"x": 0})
    assert warm.result(timeout=20) == {"x": 0, "y": 0}
    worker.send_signal(signal.SIGTERM)  # idle: it stops at once
    assert wait_exit(worker, 20) == 0

    later = client.submit_many("t_batch", [{"x": i} for i in range(1, 4)])
    assert [job.status() for job in later] == [JobStatus.QUEUED] * 3
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0
    assert [job.result(timeout=10) for job in later] == [{"x": i, "y": 2 * i} for i in (1, 2, 3)]
    assert_drained(redis_client, [STAGE])


def test_burst_drains_then_exits_zero(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    jobs = client.submit_many("t_batch", [{"x": i} for i in range(30)])
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0
    # Everything was done before it exited: nothing is left for anyone to do.
    records = [job.info() for job in jobs]
    assert [r.status for r in records] == [JobStatus.DONE] * 30
    assert stat(redis_client, STAGE, "done") == 30
    assert_drained(redis_client, [STAGE])


def test_burst_on_an_empty_stream_exits_zero(settings: Settings, workers: Workers) -> None:
    register(settings, t_batch)
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0


def test_burst_drains_every_stage_of_a_chain(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """One burst worker serving both stages of a chain: the second stage must not stop while
    the first one still has work to hand it (its first batch takes 0.5 s)."""
    register(settings, t_chain)
    jobs = client.submit_many("t_chain", [{"x": i, "sleep": 0.5} for i in range(6)])
    assert wait_exit(workers.start("t_chain", burst=True), 30) == 0
    statuses = {str(job.status()) for job in jobs}
    assert statuses == {"done"}, (
        f"the burst worker exited 0 with jobs left undone ({statuses}); backlog of the second "
        f"stage: {redis_client.xlen(KEYS.stream(0, 't_chain.second'))}"
    )
    assert [r.result for r in wait_finished(jobs, 1)] == [(i + 1) * 10 for i in range(6)]
    assert_drained(redis_client, ["t_chain.first", "t_chain.second"])


def test_sigusr1_logs_what_each_task_waits_for_and_keeps_serving(
    settings: Settings, client: Client, workers: Workers, capfd: pytest.CaptureFixture[str]
) -> None:
    register(settings, t_batch)
    worker = workers.start(STAGE)
    assert client.submit("t_batch", {"x": 1}).result(timeout=20) == {"x": 1, "y": 2}
    worker.send_signal(signal.SIGUSR1)
    logged: list[str] = []

    def dumped() -> bool:
        logged.append(capfd.readouterr().err)
        return "_read_loop" in "".join(logged)

    wait_until(dumped, 10, "no task dump logged")
    assert client.submit("t_batch", {"x": 2}).result(timeout=20) == {"x": 2, "y": 4}
    worker.send_signal(signal.SIGTERM)
    assert wait_exit(worker, 20) == 0
