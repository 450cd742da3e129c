"""``batchline worker --processes N`` (issue 10.4): a poison entry that kills the process is
survived by the supervisor, which forks the dead worker's replacement under the same name; the
replacement re-reads what its predecessor held at once (no visibility timeout to wait out:
here it is 60 s, longer than the test), the poison entry is dead-lettered after
max_deliveries attempts and its batch mates complete. SIGTERM stops it all with exit 0."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys

import redis

from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.conftest import ROOT, worker_env
from tests.pipelines import t_batch
from tests.support import wait_exit, wait_finished
from tests.workers.support import KEYS, assert_drained, register, seen, stat

STAGE = "t_batch.model"


def test_the_supervisor_replaces_a_crashed_worker_which_rereads_its_entries_at_once(
    settings: Settings, client: Client, redis_client: redis.Redis
) -> None:
    settings = settings.replace(visibility_timeout_s=60.0, max_deliveries=2)
    register(settings, t_batch)
    poison = 2
    jobs = client.submit_many("t_batch", [{"x": i, "kill": i == poison} for i in range(7)])
    command = [sys.executable, "-m", "batchline", "worker", "t_batch", "--processes", "1"]
    supervisor = subprocess.Popen(
        command, env=worker_env(settings, BATCHLINE_DEVICE="cpu"), cwd=ROOT
    )
    try:
        records = wait_finished(jobs, 40)
        assert supervisor.poll() is None, "the supervisor died with its worker"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = wait_exit(supervisor, 20, "supervisor")
    assert code == 0

    statuses = [r.status for r in records]
    assert statuses == [JobStatus.FAILED if i == poison else JobStatus.DONE for i in range(7)]
    assert "dead-lettered after 2 attempts" in (records[poison].error or "")
    assert collections.Counter(seen(redis_client, STAGE))[poison] == 2
    # Re-read by the replacement under the same name, not claimed by another consumer.
    assert stat(redis_client, STAGE, "redelivered") == 0
    assert len(redis_client.xrange(KEYS.dead(0, STAGE))) == 1
    assert_drained(redis_client, [STAGE])
