"""Suspects run in a forked sandbox (issue 10.4): an input that kills the worker process kills
it once; re-run in children of the worker, it is found alone and dead-lettered with the crash
as its reason, while its batch mates end done, through ``batchline worker --processes 1``
(real processes: its supervisor's log counts the crashes). The visibility timeout (60 s) is
longer than each test, so nothing is claimed: the restarted worker re-reads its own entries."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

import redis

from queueing.client import Client, Job
from queueing.jobs import JobRecord, JobStatus
from queueing.settings import Settings
from tests.conftest import ROOT, worker_env
from tests.pipelines import t_batch
from tests.support import wait_exit, wait_finished
from tests.workers.support import KEYS, assert_drained, register, seen, stat

STAGE = "t_batch.model"


def _supervised(
    settings: Settings, jobs: list[Job], log: Path, timeout: float = 40
) -> tuple[list[JobRecord], int]:
    """Run ``batchline worker t_batch --processes 1`` until every job has ended; the records
    and how many times the supervisor restarted its worker."""
    command = [sys.executable, "-m", "batchline", "worker", "t_batch", "--processes", "1"]
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            command,
            env=worker_env(settings, BATCHLINE_DEVICE="cpu"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            records = wait_finished(jobs, timeout)
            assert supervisor.poll() is None, "the supervisor died with its worker"
        finally:
            supervisor.send_signal(signal.SIGTERM)
            code = wait_exit(supervisor, 20, "supervisor")
    assert code == 0, log.read_text(errors="replace")
    return records, log.read_text(errors="replace").count("restarting it")


def test_a_crashing_input_crashes_the_worker_once_and_is_dead_lettered_alone(
    settings: Settings, client: Client, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.replace(visibility_timeout_s=60.0)  # max_deliveries: 3, the default
    register(settings, t_batch)
    poison = 2
    jobs = client.submit_many("t_batch", [{"x": i, "kill": i == poison} for i in range(7)])

    records, crashes = _supervised(settings, jobs, tmp_path / "worker.log")

    assert crashes == 1, "the worker crashed more than once: the sandbox did not isolate it"
    statuses = [r.status for r in records]
    assert statuses == [JobStatus.FAILED if i == poison else JobStatus.DONE for i in range(7)]
    assert [r.result for i, r in enumerate(records) if i != poison] == [
        {"x": i, "y": 2 * i} for i in range(7) if i != poison
    ]
    error = records[poison].error or ""
    assert "crashed the worker process (killed by SIGKILL)" in error, error
    assert "alone in a sandbox" in error, error
    dead = redis_client.xrange(KEYS.dead(0, STAGE))
    assert len(dead) == 1, f"dead letters: {dead}"
    assert dead[0][1][b"job"] == jobs[poison].id.encode()
    assert b"crashed the worker process" in dead[0][1][b"reason"]
    counts = collections.Counter(seen(redis_client, STAGE))
    # Once in the worker (the crash), then in the sandbox: once in each group that ran (a
    # group that crashes is halved: at most 1 + log2(8) groups hold an item).
    assert all(2 <= counts[i] <= 5 for i in range(7)), counts
    assert stat(redis_client, STAGE, "done") == 6, "a result was published more than once"
    assert stat(redis_client, STAGE, "redelivered") == 0, "re-read, not claimed"
    assert_drained(redis_client, [STAGE])


def test_a_raising_input_among_suspects_still_fails_alone(
    settings: Settings, client: Client, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """In the sandbox too, an input whose batch raises fails alone (not dead-lettered) while
    the one that crashes is dead-lettered and the rest end done."""
    settings = settings.replace(visibility_timeout_s=60.0)
    register(settings, t_batch)
    crash, bad = 1, 5
    items = [{"x": i, "kill": i == crash, "fail": i == bad} for i in range(8)]
    jobs = client.submit_many("t_batch", items)

    records, crashes = _supervised(settings, jobs, tmp_path / "worker.log")

    assert crashes == 1
    statuses = [r.status for r in records]
    assert statuses == [JobStatus.FAILED if i in (crash, bad) else JobStatus.DONE for i in range(8)]
    assert "crashed the worker process" in (records[crash].error or "")
    assert records[bad].error == "ValueError: bad input x=5"
    dead = redis_client.xrange(KEYS.dead(0, STAGE))
    assert [fields[b"job"] for _, fields in dead] == [jobs[crash].id.encode()]
    assert_drained(redis_client, [STAGE])


def test_a_suspect_that_hangs_in_the_sandbox_is_bounded(
    settings: Settings, client: Client, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A sandbox child past BATCHLINE_SANDBOX_TIMEOUT_S is killed and its group bisected like
    one that crashed: the input that hangs is dead-lettered, the others end done."""
    settings = settings.replace(visibility_timeout_s=60.0, sandbox_timeout_s=1.0)
    register(settings, t_batch)
    crash, hang = 1, 4  # (the worker crashes on the batch before it would sleep)
    items = [{"x": i, "kill": i == crash, "sleep": 600.0 if i == hang else 0} for i in range(6)]
    jobs = client.submit_many("t_batch", items)

    records, crashes = _supervised(settings, jobs, tmp_path / "worker.log")

    assert crashes == 1
    statuses = [r.status for r in records]
    assert statuses == [
        JobStatus.FAILED if i in (crash, hang) else JobStatus.DONE for i in range(6)
    ]
    assert "crashed the worker process" in (records[crash].error or "")
    error = records[hang].error or ""
    assert "ran past the sandbox's limit of 1s" in error, error
    assert len(redis_client.xrange(KEYS.dead(0, STAGE))) == 2
    assert_drained(redis_client, [STAGE])


def test_without_the_sandbox_suspects_run_in_the_worker(
    settings: Settings, client: Client, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """BATCHLINE_SANDBOX=0: the poison crashes the worker max_deliveries times, as before."""
    settings = settings.replace(visibility_timeout_s=60.0, max_deliveries=2, sandbox=False)
    register(settings, t_batch)
    poison = 3
    jobs = client.submit_many("t_batch", [{"x": i, "kill": i == poison} for i in range(5)])

    records, crashes = _supervised(settings, jobs, tmp_path / "worker.log")

    assert crashes == 2
    assert [r.status for r in records] == [
        JobStatus.FAILED if i == poison else JobStatus.DONE for i in range(5)
    ]
    assert "dead-lettered after 2 attempts" in (records[poison].error or "")
    assert_drained(redis_client, [STAGE])
