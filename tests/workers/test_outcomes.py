"""How each item of a batch ends, through real workers: a failing item fails alone; expired and
cancelled jobs never reach the model; undecodable entries fail their job (if they name one),
go to the dead-letter stream, and the worker goes on."""

from __future__ import annotations

import time

import pytest
import redis

from queueing.client import Client
from queueing.errors import JobCancelled, JobExpired, JobFailed
from queueing.jobs import JobStatus
from queueing.keys import new_job_id
from queueing.settings import Settings
from tests.pipelines import t_batch, t_contract
from tests.support import Workers
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

STAGE = "t_batch.model"


def test_a_failing_item_fails_alone(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    bad = {2, 6}
    jobs = client.submit_many("t_batch", [{"x": i, "fail": i in bad} for i in range(8)])
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0
    records = wait_finished(jobs, 10)

    for i, (job, record) in enumerate(zip(jobs, records, strict=True)):
        if i in bad:
            assert record.status is JobStatus.FAILED
            with pytest.raises(JobFailed) as failed:
                job.result(timeout=1)
            assert failed.value.stage == STAGE
            assert failed.value.error == f"ValueError: bad input x={i}"
            assert STAGE in str(failed.value)
        else:
            assert record.status is JobStatus.DONE, record
            assert record.result == {"x": i, "y": 2 * i}
            # It shared its batch (of 8) with the items that made the handler raise.
            assert record.timings[0].batch_size == 8
    assert batches(redis_client, STAGE)[0] == 8
    assert stat(redis_client, STAGE, "failed") == 2
    assert stat(redis_client, STAGE, "done") == 6
    assert_drained(redis_client, [STAGE])


def test_a_broken_contract_fails_the_batch_naming_the_handler(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_contract)
    jobs = client.submit_many("t_contract", [{"x": i} for i in range(3)])
    assert wait_exit(workers.start("t_contract.model", burst=True), 30) == 0
    for job in jobs:
        with pytest.raises(JobFailed) as failed:
            job.result(timeout=10)
        assert failed.value.stage == "t_contract.model"
        assert "ShortModel.predict returned 2 outputs for 3 inputs" in failed.value.error
    assert_drained(redis_client, ["t_contract.model"])


def test_expired_items_never_reach_the_model(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    late = client.submit_many("t_batch", [{"x": 1}, {"x": 2}], timeout_s=0.05)
    time.sleep(0.3)  # their deadline passes while they wait in the queue
    fresh = client.submit("t_batch", {"x": 3})
    roomy = client.submit("t_batch", {"x": 4}, timeout_s=60)
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0

    for job in late:
        with pytest.raises(JobExpired):
            job.result(timeout=10)
        assert job.status() is JobStatus.EXPIRED
    assert fresh.result(timeout=10) == {"x": 3, "y": 6}
    assert roomy.result(timeout=10) == {"x": 4, "y": 8}
    assert sorted(seen(redis_client, STAGE)) == [3, 4], "the model saw an expired item"
    assert stat(redis_client, STAGE, "expired") == 2
    assert_drained(redis_client, [STAGE])


def test_cancelled_queued_jobs_never_reach_the_model(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    jobs = client.submit_many("t_batch", [{"x": i} for i in range(6)])
    assert jobs[1].cancel() is JobStatus.CANCELLED
    assert client.cancel(jobs[4].id) is JobStatus.CANCELLED
    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0

    for i, job in enumerate(jobs):
        if i in (1, 4):
            with pytest.raises(JobCancelled):
                job.result(timeout=10)
        else:
            assert job.result(timeout=10) == {"x": i, "y": 2 * i}
    assert sorted(seen(redis_client, STAGE)) == [0, 2, 3, 5], "the model saw a cancelled job"
    assert jobs[1].cancel() is JobStatus.CANCELLED  # cancelling again changes nothing
    assert_drained(redis_client, [STAGE])


def test_undecodable_entries_fail_their_job_go_dead_and_the_worker_goes_on(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, t_batch)
    stream = KEYS.stream(0, STAGE)

    # Two real jobs whose entries get corrupted: their records exist, their entries name them.
    victims = client.submit_many("t_batch", [{"x": 100}, {"x": 101}])
    for entry_id, _ in redis_client.xrange(stream):
        redis_client.xdel(stream, entry_id)

    def garbage(fields: dict[str, bytes | str]) -> None:
        redis_client.xadd(stream, fields)

    good = []
    good.append(client.submit("t_batch", {"x": 0}))
    garbage({"junk": "no job field at all"})
    good.append(client.submit("t_batch", {"x": 1}))
    garbage({"job": victims[0].id, "data": b"{not json", "at": "1.0"})
    garbage({"job": "not-a-job-id", "data": "1", "at": "1.0"})
    good.append(client.submit("t_batch", {"x": 2}))
    garbage({"job": victims[1].id, "data": "{}", "at": "yesterday"})
    garbage({"job": b"\xff\xfe", "data": b"\x00"})
    garbage({"job": new_job_id(0), "data": b"\x80"})  # a job id with no record
    good += client.submit_many("t_batch", [{"x": i} for i in range(3, 12)])

    assert wait_exit(workers.start(STAGE, burst=True), 30) == 0

    assert [job.result(timeout=10) for job in good] == [{"x": i, "y": 2 * i} for i in range(12)]
    with pytest.raises(JobFailed) as failed:
        victims[0].result(timeout=10)
    assert failed.value.stage == STAGE
    assert "undecodable entry" in failed.value.error
    assert "not valid JSON" in failed.value.error
    with pytest.raises(JobFailed) as failed:
        victims[1].result(timeout=10)
    assert "undecodable entry" in failed.value.error
    assert "timestamp" in failed.value.error

    dead = redis_client.xrange(KEYS.dead(0, STAGE))
    assert len(dead) == 6
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert all(reason.startswith("undecodable entry") for reason in reasons), reasons
    # The dead letter keeps the entry as it came, to be looked at.
    assert any(fields.get(b"junk") == b"no job field at all" for _, fields in dead)
    assert any(fields.get(b"job") == victims[0].id.encode() for _, fields in dead)
    assert sorted(seen(redis_client, STAGE)) == list(range(12)), "the model saw garbage"
    assert stat(redis_client, STAGE, "dead") == 6
    assert_drained(redis_client, [STAGE])
