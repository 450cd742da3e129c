"""What a waiting process keeps in memory (issue 10.17): the listener's cache of recent wake-up
notices holds every notice's job, but not a large result (its waiter re-reads the record), and
never more than RECENT_BYTES. Before the bound, a gateway kept 65,536 notices with their whole
results: 6.5 GB with 100 KB results. Here 300 jobs end with 100 KB results (30 MB) through a
real worker; the cache must keep well under 1 MB of them."""

from __future__ import annotations

from pipelines.examples.echo import echo
from queueing.client import Client, Job
from queueing.settings import Settings
from queueing.waiters import RECENT_BYTES, RECENT_VALUE_LIMIT
from tests.support import Workers, register, wait_finished

N = 300
RESULT_BYTES = 100_000


def test_the_notice_cache_does_not_hold_large_results(
    settings: Settings, client: Client, workers: Workers
) -> None:
    register(settings, echo)
    inputs = [f"{i:06d}" + "r" * (RESULT_BYTES - 6) for i in range(N)]
    jobs = client.submit_many("echo", inputs)
    workers.start("echo")
    records = wait_finished(jobs, 60)
    assert [r.result for r in records] == inputs

    hub = client.listener()._hub
    assert set(hub.recent) >= {job.id for job in jobs}, "ended jobs were forgotten"
    kept = [notice for notice in hub.recent.values() if notice is not None]
    kept_bytes = sum(len(notice.value) for notice in kept)
    assert all(len(notice.value) <= RECENT_VALUE_LIMIT for notice in kept)
    assert kept_bytes < 1_000_000, f"the cache holds {kept_bytes} bytes of results"
    assert hub.recent_bytes <= RECENT_BYTES

    # A wait that starts now finds the job in the cache without its result: it reads it.
    late = Job(client, jobs[-1].id, watched=True)
    assert late.result(timeout=10) == inputs[-1]
