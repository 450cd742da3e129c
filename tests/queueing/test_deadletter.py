"""Dead-letter tools against real worker processes: a poison input kills its worker until it is
fixed; dead-lettered, then requeued with ``batchline dlq``, it ends done exactly once, and a
waiter of the client that saw it fail is woken by its new end."""

from __future__ import annotations

import re
import subprocess
import threading
from typing import Any

import pytest
import redis

from queueing.client import Client, Job
from queueing.errors import JobFailed
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.poison import POISONED, STAGES, dead_letter_poison, t_poison
from tests.support import (
    KEYS,
    Workers,
    assert_drained,
    batchline_cli,
    register,
    stat,
    wait_exit,
    wait_until,
)
from tests.workers.support import seen

MODEL = "t_poison.model"


@pytest.fixture
def poison_settings(settings: Settings) -> Settings:
    """One attempt per stage: a worker that dies on an item dead-letters it when it restarts."""
    return settings.replace(pipelines=("tests.poison",), max_deliveries=1)


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``batchline dlq ...`` as an operator runs it."""
    return batchline_cli(settings, "dlq", *args, timeout=30)


def dead_letter(
    settings: Settings, client: Client, workers: Workers, r: redis.Redis, inputs: list[Any]
) -> list[Job]:
    """Submit ``inputs`` with the poison on; a worker dies on each poison item and its restart
    (same consumer name: it re-reads what it held) dead-letters it. Returns once every job has
    ended, with the worker stopped."""
    r.set(POISONED, 1)
    jobs = client.submit_many("t_poison", inputs)
    dead_letter_poison(workers, settings, sum(bool(item.get("poison")) for item in inputs))
    drain(workers, settings, jobs)
    return jobs


def drain(workers: Workers, settings: Settings, jobs: list[Job]) -> None:
    """Run consumer ``w`` (it re-reads what it held) until every job has ended, then stop it.
    (Not a burst worker: one here sometimes failed to exit after the jobs had ended, about one
    run in ten, which is not what these tests are about and is not understood yet.)"""
    worker = workers.start("t_poison", name="w", settings=settings)
    wait_until(lambda: all(job.status().finished for job in jobs), 30, "every job to end")
    worker.terminate()
    assert wait_exit(worker, 30) == 0


def test_a_poison_job_fixed_and_requeued_ends_done_once(
    poison_settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(poison_settings, t_poison)
    # (the poison first: see tests.poison)
    inputs = [{"x": 1, "poison": True}, {"x": 0}, {"x": 2}]
    jobs = dead_letter(poison_settings, client, workers, redis_client, inputs)
    poison = jobs[0]
    with pytest.raises(JobFailed, match="dead-lettered after 1 attempts"):
        poison.result(timeout=10)  # (this client's listener now remembers the failure)
    assert [job.result(timeout=10) for job in jobs[1:]] == [
        {"x": 0, "y": 0, "formatted": True},
        {"x": 2, "y": 4, "formatted": True},
    ]

    listed = dlq(poison_settings, "list", MODEL)
    assert listed.returncode == 0, listed.stderr
    assert f"{MODEL}: 1 dead letter" in listed.stdout
    assert poison.id in listed.stdout
    assert "dead-lettered after 1 attempts" in listed.stdout
    shown = dlq(poison_settings, "show", poison.id)
    assert shown.returncode == 0, shown.stderr
    assert '"poison":true' in shown.stdout
    assert re.search(rf"^stage: +{MODEL}$", shown.stdout, re.MULTILINE), shown.stdout

    redis_client.delete(POISONED)  # the fix
    requeued = dlq(poison_settings, "requeue", poison.id)
    assert requeued.returncode == 0, requeued.stderr + requeued.stdout
    assert f"{poison.id}: queued again at {MODEL}" in requeued.stdout
    assert poison.status() is JobStatus.QUEUED
    assert redis_client.ttl(KEYS.job(poison.id)) == -1, "a live record has no TTL"
    again = dlq(poison_settings, "requeue", poison.id)
    assert again.returncode == 1
    assert "no dead letter" in again.stdout

    # A waiter of the client that saw the job fail waits for its new end.
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(poison.result(timeout=30)))
    waiter.start()
    worker = workers.start("t_poison", settings=poison_settings)
    waiter.join(40)
    assert results == [{"x": 1, "y": 2, "formatted": True}]
    worker.terminate()
    assert wait_exit(worker, 30) == 0

    assert seen(redis_client, MODEL).count(1) == 2, "killed once, then run once"
    assert stat(redis_client, MODEL, "next") == 3
    assert stat(redis_client, "t_poison.format", "done") == 3
    assert stat(redis_client, MODEL, "requeued") == 1
    assert redis_client.xlen(KEYS.dead(0, MODEL)) == 0
    assert_drained(redis_client, STAGES)


def test_requeue_all_and_purge(
    poison_settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(poison_settings, t_poison)
    inputs = [{"x": x, "poison": True} for x in range(3)]
    jobs = dead_letter(poison_settings, client, workers, redis_client, inputs)
    assert redis_client.xlen(KEYS.dead(0, MODEL)) == 3

    # Still poisoned: requeued, the first dies again (and is dead-lettered again by the restart).
    requeued = dlq(poison_settings, "requeue", "--all", MODEL)
    assert requeued.returncode == 0, requeued.stderr + requeued.stdout
    assert "requeued 3 of 3" in requeued.stdout
    assert {job.status() for job in jobs} == {JobStatus.QUEUED}
    wait_exit(workers.start("t_poison", name="w", settings=poison_settings), 30)
    redis_client.delete(POISONED)
    drain(workers, poison_settings, jobs)
    statuses = sorted(job.status() for job in jobs)
    assert statuses == [JobStatus.DONE, JobStatus.DONE, JobStatus.FAILED]
    assert redis_client.xlen(KEYS.dead(0, MODEL)) == 1

    purged = dlq(poison_settings, "purge", MODEL)
    assert purged.returncode == 0
    assert "purged 1 dead letters" in purged.stdout
    assert redis_client.xlen(KEYS.dead(0, MODEL)) == 0
    assert sorted(job.status() for job in jobs) == statuses, "purging leaves the jobs as they are"
    listed = dlq(poison_settings, "list", "nodot")
    assert listed.returncode == 2
    assert "pipeline.stage" in listed.stderr
    assert stat(redis_client, MODEL, "requeued") == 3
