"""A middle stage's worker SIGKILLed mid-batch: its entries are claimed by another worker of
that stage, every job completes exactly once, and the last stage sees each job once."""

from __future__ import annotations

import collections
import signal

import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.composition.helpers import (
    assert_drained,
    register,
    seen,
    stat,
    wait_finished,
    wait_until,
)
from tests.composition.pipelines import c_kill
from tests.support import Workers

STAGES = ["c_kill.head", "c_kill.middle", "c_kill.tail"]
HEAD, MIDDLE, TAIL = STAGES


def test_sigkill_of_a_middle_stage_mid_batch_completes_every_job_once(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, c_kill)
    n = 12  # one batch of 8 in the slow model, the rest read ahead
    jobs = client.submit_many("c_kill", [{"x": i} for i in range(n)])
    workers.start(HEAD)
    workers.start(TAIL)
    doomed = workers.start(MIDDLE, name="doomed")
    wait_until(lambda: seen(redis_client, MIDDLE), 30, "the middle stage never started a batch")
    doomed.kill()  # SIGKILL while the middle model holds its batch
    assert doomed.wait(10) == -signal.SIGKILL
    handed_on = stat(redis_client, MIDDLE, "next")
    assert handed_on == 0, f"the middle stage handed {handed_on} items on before the kill"
    assert not any(job.status().finished for job in jobs), "a job finished before the kill"

    workers.start(MIDDLE, name="rescuer")
    records = wait_finished(jobs, 30)

    assert [r.status for r in records] == [JobStatus.DONE] * n, [r.error for r in records]
    assert [r.result for r in records] == [{"x": i, "value": (i + 1) * 10} for i in range(n)]
    for record in records:
        assert [t.stage for t in record.timings] == STAGES
    # The middle stage ran the killed batch twice; downstream, each job arrived once.
    middle_counts = collections.Counter(seen(redis_client, MIDDLE))
    assert sorted(middle_counts) == list(range(n))
    assert max(middle_counts.values()) == 2, f"the killed batch was not run again: {middle_counts}"
    tail_counts = collections.Counter(seen(redis_client, TAIL))
    assert tail_counts == dict.fromkeys(range(n), 1), f"the tail saw duplicates: {tail_counts}"
    assert collections.Counter(seen(redis_client, HEAD)) == dict.fromkeys(range(n), 1)
    assert stat(redis_client, HEAD, "next") == n
    assert stat(redis_client, MIDDLE, "next") == n, "the middle stage handed an item on twice"
    assert stat(redis_client, MIDDLE, "redelivered") >= 1
    assert stat(redis_client, TAIL, "done") == n, "a result was published more than once"
    assert_drained(redis_client, STAGES)
