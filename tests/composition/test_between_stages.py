"""A job waiting between two stages: its deadline passes, or it is cancelled. Either way the
second stage's model never sees it, and the stream entry it left is cleaned up."""

from __future__ import annotations

import time

import pytest
import redis

from queueing.client import Client
from queueing.errors import JobCancelled, JobExpired
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.composition.helpers import (
    assert_drained,
    backlog,
    register,
    seen,
    stat,
    wait_exit,
    wait_ready,
    wait_until,
)
from tests.composition.pipelines import c_hop
from tests.support import Workers

FIRST, SECOND = "c_hop.first", "c_hop.second"


def test_a_deadline_that_passes_between_stages_expires_the_job(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, c_hop)
    workers.start(FIRST, name="first")
    wait_ready(redis_client, "first", 30)
    late = client.submit("c_hop", {"x": 1}, timeout_s=1.5)
    control = client.submit("c_hop", {"x": 2})
    wait_until(
        lambda: backlog(redis_client, SECOND)[0] == 2,
        20,
        "the first stage did not hand both jobs on (before the deadline)",
    )
    deadline = late.info().deadline
    assert deadline is not None
    wait_until(lambda: time.time() > deadline + 0.05, 10, "the deadline never passed")

    second = workers.start(SECOND, burst=True)
    assert wait_exit(second, 30, "the second stage's burst worker") == 0

    with pytest.raises(JobExpired):
        late.result(timeout=5)
    record = late.info()
    assert record.status is JobStatus.EXPIRED
    assert record.error_stage == SECOND, "it should expire at the second stage's door"
    assert [t.stage for t in record.timings] == [FIRST]
    assert control.result(timeout=5) == 6
    assert seen(redis_client, FIRST) == [1, 2]
    assert seen(redis_client, SECOND) == [2], "an expired job reached the second stage's model"
    assert stat(redis_client, SECOND, "expired") == 1
    assert_drained(redis_client, [FIRST, SECOND])


def test_a_job_cancelled_between_stages_never_reaches_the_second(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, c_hop)
    doomed = client.submit("c_hop", {"x": 1})
    control = client.submit("c_hop", {"x": 2})
    first = workers.start(FIRST, burst=True)
    assert wait_exit(first, 30, "the first stage's burst worker") == 0
    assert backlog(redis_client, SECOND)[0] == 2, "both jobs should wait for the second stage"
    assert doomed.status() is JobStatus.RUNNING

    assert doomed.cancel() is JobStatus.CANCELLED
    second = workers.start(SECOND, burst=True)
    assert wait_exit(second, 30, "the second stage's burst worker") == 0

    with pytest.raises(JobCancelled):
        doomed.result(timeout=5)
    record = doomed.info()
    assert record.status is JobStatus.CANCELLED
    assert record.result is None
    assert [t.stage for t in record.timings] == [FIRST]
    assert control.result(timeout=5) == 6
    assert seen(redis_client, SECOND) == [2], "a cancelled job reached the second stage's model"
    assert stat(redis_client, SECOND, "skip") == 1
    assert_drained(redis_client, [FIRST, SECOND])
