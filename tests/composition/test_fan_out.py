"""Fan-out and join through real workers, one per stage, run one after the other (burst mode)
so that the order in which branches finish is known: the join runs once per job with every
branch's output; a failed branch fails its job once, with that branch's name, and the join
never runs on a partial input."""

from __future__ import annotations

import json
import signal

import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.composition.helpers import (
    KEYS,
    assert_drained,
    register,
    seen,
    stat,
    wait_exit,
    wait_until,
)
from tests.composition.pipelines import JOINED, c_fan
from tests.support import Workers

SPLIT, BRANCH_A, BRANCH_B, JOIN = "c_fan.split", "c_fan.branch_a", "c_fan.branch_b", "c_fan.join"
STAGES = [SPLIT, BRANCH_A, BRANCH_B, JOIN]


def _drain(workers: Workers, stage: str) -> None:
    """Run one burst worker of ``stage`` until its stream is empty."""
    assert wait_exit(workers.start(stage, burst=True), 30, f"the burst worker of {stage}") == 0


def test_the_join_gets_every_branch_once_and_a_failed_branch_fails_its_job_once(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, c_fan)
    ok = list(range(6))
    fail_b = [10, 11]  # branch_a answers first, then branch_b fails
    fail_a = [20]  # branch_a fails first; branch_b must not even run it
    fail_both = [30]
    inputs = (
        [{"x": x} for x in ok]
        + [{"x": x, "fail_b": True} for x in fail_b]
        + [{"x": x, "fail_a": True} for x in fail_a]
        + [{"x": x, "fail_a": True, "fail_b": True} for x in fail_both]
    )
    jobs = client.submit_many("c_fan", inputs)
    by_x = {item["x"]: job for item, job in zip(inputs, jobs, strict=True)}

    _drain(workers, SPLIT)
    _drain(workers, BRANCH_A)
    # branch_a's outputs wait in each job's join hash for branch_b's
    for x in ok + fail_b:
        join_key = KEYS.joins(by_x[x].id)
        assert redis_client.hkeys(join_key) == [b"branch_a"], f"x={x}: join hash after branch_a"
    for x in fail_a + fail_both:
        assert by_x[x].status() is JobStatus.FAILED
        assert not redis_client.exists(KEYS.joins(by_x[x].id)), f"x={x}: a failed branch joined"
    _drain(workers, BRANCH_B)
    _drain(workers, JOIN)

    # The join ran once per successful job, with both branches' outputs; never otherwise.
    joined = [json.loads(doc) for doc in redis_client.lrange(JOINED, 0, -1)]
    assert sorted(doc["branch_a"]["x"] for doc in joined) == ok, joined
    for doc in joined:
        x = doc["branch_a"]["x"]
        assert doc == {"branch_a": {"x": x, "v": x + 1000}, "branch_b": {"x": x, "v": x + 2000}}
    for x in ok:
        record = by_x[x].info()
        assert record.status is JobStatus.DONE, record.error
        assert record.result == {"a": x + 1000, "b": x + 2000}
        assert sorted(t.stage for t in record.timings) == sorted(STAGES)
        assert not redis_client.exists(KEYS.joins(by_x[x].id)), f"x={x}: join hash left over"

    # A failed branch fails its job, naming that branch; the other branch's late arrival and
    # a second failure change nothing.
    for x, stage in [(x, BRANCH_B) for x in fail_b] + [(x, BRANCH_A) for x in fail_a + fail_both]:
        record = by_x[x].info()
        assert record.status is JobStatus.FAILED
        assert record.error_stage == stage, f"x={x}: {record.error}"
        assert record.error == f"ValueError: bad input x={x}"
        assert JOIN not in [t.stage for t in record.timings]
    for x in fail_b:
        join_key = KEYS.joins(by_x[x].id)
        assert redis_client.hkeys(join_key) == [b"branch_a"], f"x={x}: join hash"
        assert redis_client.ttl(join_key) > 0, f"x={x}: a partial join hash must expire"
    for x in fail_a + fail_both:
        assert not redis_client.exists(KEYS.joins(by_x[x].id)), f"x={x}: join hash"
    assert not set(seen(redis_client, BRANCH_B)) & set(fail_a + fail_both), (
        "branch_b ran a job that branch_a had already failed"
    )
    assert stat(redis_client, BRANCH_A, "failed") == len(fail_a + fail_both)
    assert stat(redis_client, BRANCH_B, "failed") == len(fail_b)
    assert stat(redis_client, BRANCH_B, "skip") == len(fail_a + fail_both)
    assert stat(redis_client, JOIN, "done") == len(ok)
    assert stat(redis_client, SPLIT, "next") == len(inputs)
    assert sorted(set(seen(redis_client, BRANCH_A))) == ok + fail_b + fail_a + fail_both
    assert_drained(redis_client, STAGES)


def test_a_branch_that_finishes_after_its_job_failed_leaves_no_join_behind(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """branch_b starts the job and is held mid-batch (SIGSTOP) while branch_a fails it: branch_b's late
    output is dropped (no join hash, no join entry), and the job keeps branch_a's failure."""
    register(settings, c_fan)
    job = client.submit("c_fan", {"x": 7, "fail_a": True, "sleep_b": 1.0})
    control = client.submit("c_fan", {"x": 8})
    _drain(workers, SPLIT)
    slow = workers.start(BRANCH_B)
    wait_until(lambda: 7 in seen(redis_client, BRANCH_B), 30, "branch_b never started the job")
    slow.send_signal(signal.SIGSTOP)  # hold branch_b mid-batch (its job started, not handed off)
    assert stat(redis_client, BRANCH_B, "join") == 0, "branch_b finished before it was paused"
    _drain(workers, BRANCH_A)
    assert job.status() is JobStatus.FAILED
    slow.send_signal(signal.SIGCONT)
    wait_until(
        lambda: stat(redis_client, BRANCH_B, "join") == 2,
        30,
        "branch_b never handed off its two items",
    )
    _drain(workers, JOIN)

    record = job.info()
    assert record.status is JobStatus.FAILED
    assert record.error_stage == BRANCH_A, record.error
    assert record.error == "ValueError: bad input x=7"
    assert not redis_client.exists(KEYS.joins(job.id)), "a late branch joined a failed job"
    assert control.result(timeout=30) == {"a": 1008, "b": 2008}
    joined = [json.loads(doc) for doc in redis_client.lrange(JOINED, 0, -1)]
    assert [doc["branch_a"]["x"] for doc in joined] == [8], "the join ran on a failed job"
    assert_drained(redis_client, STAGES)
