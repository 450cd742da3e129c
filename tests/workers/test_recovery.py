"""Crashes lose nothing, through real worker processes: SIGKILL mid-batch, a stalled worker
whose entries were claimed, a poison entry that kills every worker that runs it, and a worker
restarted under the same name."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
import redis

from queueing.client import Client, Job
from queueing.errors import JobFailed
from queueing.jobs import JobRecord, JobStatus
from queueing.message import job_id_of
from queueing.settings import Settings
from tests.pipelines import t_batch, t_single
from tests.support import Workers
from tests.workers.support import (
    KEYS,
    assert_drained,
    backlog,
    register,
    seen,
    stat,
    wait_exit,
    wait_finished,
    wait_until,
)

STAGE = "t_batch.model"


def _statuses(jobs: list[Job]) -> list[JobStatus]:
    return [job.status() for job in jobs]


def test_sigkill_mid_batch_loses_nothing(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    n = 12  # a batch of 8 in the model, 4 more read ahead
    jobs = client.submit_many("t_batch", [{"x": i, "sleep": 1.0} for i in range(n)])
    first = workers.start(STAGE)
    wait_until(lambda: seen(redis_client, STAGE), 20, "the first worker never started a batch")
    # (a batch of new entries shows its jobs running once it has run RUNNING_AFTER_S)
    wait_until(lambda: JobStatus.RUNNING in _statuses(jobs), 5, "the batch never showed running")
    first.kill()  # SIGKILL while the model holds its batch
    assert first.wait(10) == -signal.SIGKILL
    assert not any(s.finished for s in _statuses(jobs)), "a job finished before the kill"

    workers.start(STAGE)
    records = wait_finished(jobs, 30)

    assert [r.status for r in records] == [JobStatus.DONE] * n
    assert [r.result for r in records] == [{"x": i, "y": 2 * i} for i in range(n)]
    counts = collections.Counter(seen(redis_client, STAGE))
    assert sorted(counts) == list(range(n))
    assert max(counts.values()) <= 2, f"an item reached the model more than twice: {counts}"
    assert stat(redis_client, STAGE, "done") == n, "a result was published more than once"
    assert stat(redis_client, STAGE, "redelivered") >= 8
    assert_drained(redis_client, [STAGE])


def test_a_stalled_worker_whose_entries_were_claimed_publishes_nothing(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """SIGSTOP a worker mid-batch past the visibility timeout: another claims and finishes its
    entries. Resumed, the stalled one finishes its batch too, but its hand-off is fenced: each
    job keeps the one result the second worker published."""
    register(settings, t_batch)
    n = 6
    jobs = client.submit_many("t_batch", [{"x": i, "sleep": 1.0} for i in range(n)])
    stalled = workers.start(STAGE, name="stalled")
    wait_until(lambda: seen(redis_client, STAGE), 20, "the first worker never started a batch")
    stalled.send_signal(signal.SIGSTOP)
    try:
        workers.start(STAGE, name="rescuer")
        records = wait_finished(jobs, 30)
        assert [r.status for r in records] == [JobStatus.DONE] * n
        finished_at = [r.finished_at for r in records]
    finally:
        stalled.send_signal(signal.SIGCONT)
    # Told to stop, it finishes the batch it held and hands it off (fenced) before it exits.
    stalled.send_signal(signal.SIGTERM)
    assert wait_exit(stalled, 20, "resumed worker") == 0

    records = [job.info() for job in jobs]
    assert [r.result for r in records] == [{"x": i, "y": 2 * i} for i in range(n)]
    assert [r.finished_at for r in records] == finished_at, "a record was written twice"
    assert stat(redis_client, STAGE, "done") == n, "a result was published more than once"
    assert stat(redis_client, STAGE, "fenced") == n
    counts = collections.Counter(seen(redis_client, STAGE))
    assert counts == dict.fromkeys(range(n), 2)
    assert_drained(redis_client, [STAGE])


def _supervise(
    workers: Workers,
    target: str,
    jobs: list[Job],
    settings: Settings,
    *,
    timeout: float,
    max_starts: int,
) -> tuple[list[JobRecord], list[int]]:
    """Keep one worker running (restarting it whenever it dies) until every job has ended.
    Returns the records and the exit status of every worker that died."""
    deaths: list[int] = []
    current = workers.start(target, settings=settings)
    limit = time.monotonic() + timeout
    while not all(job.status().finished for job in jobs):
        if time.monotonic() > limit:
            raise AssertionError(
                f"after {timeout:g}s and {len(deaths)} worker deaths, jobs still live: "
                f"{_statuses(jobs)}"
            )
        code = current.poll()
        if code is not None:
            deaths.append(code)
            assert len(deaths) < max_starts, f"workers keep dying: {deaths}"
            current = workers.start(target, settings=settings)
        time.sleep(0.05)
    current.send_signal(signal.SIGTERM)
    assert wait_exit(current, 20) == 0
    return [job.info() for job in jobs], deaths


def _check_poison(
    redis_client: redis.Redis,
    stage: str,
    jobs: list[Job],
    records: list[JobRecord],
    deaths: list[int],
    poison: int,
) -> None:
    innocent = {i: (str(r.status), r.error) for i, r in enumerate(records) if i != poison}
    assert all(status == "done" for status, _ in innocent.values()), (
        f"innocent jobs did not complete: {innocent}"
    )
    assert [r.result for i, r in enumerate(records) if i != poison] == [
        {"x": i, "y": 2 * i} for i in range(len(records)) if i != poison
    ]
    assert deaths == [-signal.SIGKILL] * 2, "each of the 2 deliveries should kill one worker"
    counts = collections.Counter(seen(redis_client, stage))
    assert counts[poison] == 2, "the poison entry reached a model other than max_deliveries times"

    with pytest.raises(JobFailed) as failed:
        jobs[poison].result(timeout=1)
    assert failed.value.stage == stage
    assert "dead-lettered after 2 attempts" in failed.value.error

    dead = redis_client.xrange(KEYS.dead(0, stage))
    assert len(dead) == 1, f"dead letters: {dead}"
    fields = dead[0][1]
    assert fields[b"job"] == jobs[poison].id.encode()
    assert b"dead-lettered" in fields[b"reason"]

    assert stat(redis_client, stage, "dead") == 1
    assert_drained(redis_client, [stage])


def test_a_poison_entry_is_dead_lettered_and_the_others_complete(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """t_single runs batches of one: the poison entry kills only its own deliveries."""
    settings = settings.replace(max_deliveries=2)
    stage = "t_single.model"
    register(settings, t_single)
    poison = 3
    jobs = client.submit_many("t_single", [{"x": i, "kill": i == poison} for i in range(7)])
    records, deaths = _supervise(workers, stage, jobs, settings, timeout=45, max_starts=6)
    _check_poison(redis_client, stage, jobs, records, deaths, poison)


def test_a_poison_entry_does_not_take_its_batch_mates_down(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """The poison entry shares a batch of 8 with innocent items. Each crash redelivers them
    all, but only the poison entry may end dead-lettered: the others must complete."""
    settings = settings.replace(max_deliveries=2)
    register(settings, t_batch)
    poison = 2
    jobs = client.submit_many("t_batch", [{"x": i, "kill": i == poison} for i in range(5)])
    records, deaths = _supervise(workers, STAGE, jobs, settings, timeout=45, max_starts=6)
    _check_poison(redis_client, STAGE, jobs, records, deaths, poison)


def test_a_restart_under_the_same_name_rereads_its_own_pending_entries(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """With a 60 s visibility timeout no claim can happen within this test: the jobs finish
    only because the restarted worker re-reads what it held under its name."""
    patient = settings.replace(visibility_timeout_s=60.0)
    register(settings, t_batch)
    n = 10  # a batch of 8 in hand and 2 read ahead
    jobs = client.submit_many("t_batch", [{"x": i, "sleep": 1.0} for i in range(n)])
    first = workers.start(STAGE, name="stable", settings=patient)
    wait_until(lambda: seen(redis_client, STAGE), 20, "the first worker never started a batch")
    first.kill()
    first.wait(10)
    assert not any(s.finished for s in _statuses(jobs)), "a job finished before the kill"
    pending = redis_client.xpending(KEYS.stream(0, STAGE), STAGE)
    assert pending["pending"] == n
    assert pending["consumers"] == [{"name": b"stable", "pending": n}]

    again = workers.start(STAGE, name="stable", settings=patient, burst=True)
    records = wait_finished(jobs, 20)
    assert wait_exit(again, 20) == 0

    assert [r.result for r in records] == [{"x": i, "y": 2 * i} for i in range(n)]
    assert stat(redis_client, STAGE, "redelivered") == 0, "the entries were claimed, not re-read"
    assert stat(redis_client, STAGE, "done") == n
    assert_drained(redis_client, [STAGE])


def test_a_worker_killed_while_idle_leaves_nothing_behind(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    idle = workers.start(STAGE)
    job = client.submit("t_batch", {"x": 1})
    assert job.result(timeout=20) == {"x": 1, "y": 2}
    os.kill(idle.pid, signal.SIGKILL)
    idle.wait(10)
    later = client.submit("t_batch", {"x": 2})  # accepted while no worker runs
    assert later.status() is JobStatus.QUEUED
    workers.start(STAGE)
    assert later.result(timeout=20) == {"x": 2, "y": 4}
    assert_drained(redis_client, [STAGE])


def test_a_dead_workers_entries_are_recovered_while_the_stage_is_busy(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """Issue 10.2: a live worker took over a dead one's entries only once its own inbox was
    empty, so a standing backlog held them back until it drained. Now they are claimed on a
    heartbeat whatever the load, and re-run while thousands of entries still wait. They should
    all be re-run within the visibility timeout plus two heartbeats of the kill."""
    settings = settings.replace(visibility_timeout_s=1.0)
    heartbeat = settings.heartbeat_interval_s
    register(settings, t_batch)
    n = 3000
    stream = KEYS.stream(0, STAGE)
    # 20 ms per batch of 8: about 400 items/s per worker, so the backlog stands for seconds.
    client.submit_many("t_batch", [{"x": i, "sleep": 0.02} for i in range(n)])
    doomed = workers.start(STAGE, name="doomed", settings=settings)
    workers.start(STAGE, name="survivor", settings=settings)

    def holding() -> dict[str, int]:
        info = redis_client.xpending(stream, STAGE)
        return {c["name"].decode(): int(c["pending"]) for c in info["consumers"]}

    wait_until(
        lambda: holding().get("doomed", 0) and holding().get("survivor", 0),
        20,
        "both workers hold entries",
    )
    doomed.kill()  # SIGKILL while it holds a batch (and what it read ahead)
    killed_at = time.time()
    assert doomed.wait(10) == -signal.SIGKILL
    held = redis_client.xpending_range(stream, STAGE, "-", "+", 1000, consumername="doomed")
    assert held, "the killed worker held nothing"
    entries = [
        fields
        for p in held
        for _, fields in redis_client.xrange(stream, p["message_id"], p["message_id"])
    ]
    job_ids = [job_id_of(fields) for fields in entries]
    assert all(job_ids)
    assert len(job_ids) == len(held)

    limit = settings.visibility_timeout_s + 2 * heartbeat
    records = wait_finished([Job(client, job_id) for job_id in job_ids], limit + 10)
    waiting = backlog(redis_client, STAGE)[0]  # what still waits when they are all done
    assert [r.status for r in records] == [JobStatus.DONE] * len(records)
    assert waiting > 1000, f"the backlog had drained to {waiting} entries first"
    assert stat(redis_client, STAGE, "redelivered") >= len(records)
    finished = sorted(r.finished_at or 0.0 for r in records)
    first, last = finished[0] - killed_at, finished[-1] - killed_at
    assert first <= limit, f"nothing was claimed within {limit:.2f}s of the kill ({first:.2f}s)"
    # (0.5 s of slack for a loaded 2-core CI machine; here the last one ends 1.2-1.4 s in)
    assert last <= limit + 0.5, (
        f"the last of the killed worker's {len(records)} entries was re-run {last:.2f}s after "
        f"the kill, past {limit:.2f}s (visibility timeout + 2 heartbeats)"
    )
