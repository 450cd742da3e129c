"""Per-stage timings: every finished job's record (``job.info().timings``) holds, for each stage
it passed, the queue wait, the size of the batch it ran in and that batch's compute time."""

from __future__ import annotations

import collections
import time

import redis

from queueing.client import Client
from queueing.jobs import JobStatus, StageTiming
from queueing.settings import Settings
from tests.composition.helpers import (
    assert_drained,
    backlog,
    register,
    wait_exit,
    wait_finished,
    wait_until,
)
from tests.composition.pipelines import ONE_SLEEP_S, c_timed
from tests.support import Workers

STAGES = ["c_timed.one", "c_timed.two", "c_timed.three"]
ONE, TWO, THREE = STAGES
EPS = 0.005  # float rounding between the clocks of different processes' time.time()


def test_each_job_carries_its_timings_for_every_stage(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    register(settings, c_timed)
    n = 10
    jobs = client.submit_many("c_timed", [{"x": i} for i in range(n)])
    one = workers.start(ONE, burst=True)
    assert wait_exit(one, 30, "the first stage's burst worker") == 0
    assert backlog(redis_client, TWO)[0] == n
    all_waiting_at = time.time()  # every entry of stage two was added before this
    # Let stage two's entries wait a little, so that its queue wait is its own.
    wait_until(lambda: time.time() > all_waiting_at + 0.3, 5, "the clock stopped")
    workers.start(TWO)
    workers.start(THREE)
    records = wait_finished(jobs, 30)

    assert [r.status for r in records] == [JobStatus.DONE] * n, [r.error for r in records]
    assert [r.result for r in records] == list(range(n))
    by_stage: dict[str, list[StageTiming]] = collections.defaultdict(list)
    for record in records:
        assert [t.stage for t in record.timings] == STAGES, record.id
        timing = {t.stage: t for t in record.timings}
        for t in record.timings:
            assert t.queue_wait_s >= 0, t
            assert t.batch_size >= 1, t
            assert t.compute_s >= 0, t
            by_stage[t.stage].append(t)
        # Stage one's wait runs from the submit; the others' from the previous hand-off.
        assert abs(timing[ONE].queue_wait_s - (timing[ONE].started_at - record.created_at)) < EPS
        assert timing[ONE].compute_s >= ONE_SLEEP_S
        assert timing[TWO].queue_wait_s >= timing[TWO].started_at - all_waiting_at - EPS
        for before, after in [(ONE, TWO), (TWO, THREE)]:
            handed_on_by = timing[before].started_at + timing[before].compute_s
            assert timing[after].queue_wait_s <= timing[after].started_at - handed_on_by + EPS, (
                f"{after}'s queue wait includes time spent before {before} handed the job on"
            )

    # All waiting when its worker started, stage one (batches <= 4) ran 4, 4, 2 and stage two
    # (batches <= 3) ran 3, 3, 3, 1; each job names the batch it was in.
    sizes = {stage: collections.Counter(t.batch_size for t in ts) for stage, ts in by_stage.items()}
    assert sizes[ONE] == {4: 8, 2: 2}
    assert sizes[TWO] == {3: 9, 1: 1}
    for stage, timings in by_stage.items():
        batches = collections.defaultdict(list)
        for t in timings:
            batches[t.started_at].append(t)
        for members in batches.values():
            assert {t.batch_size for t in members} == {len(members)}, (stage, members)
            assert len({t.compute_s for t in members}) == 1, (stage, members)
    assert_drained(redis_client, STAGES)
