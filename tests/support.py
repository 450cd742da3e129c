"""Helpers shared by the tests that run real worker processes: registering pipelines, worker
processes that never outlive a test, bounded waits, and reading what happened in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import redis

from pipelines.dsl import Pipeline
from queueing.client import Job
from queueing.connection import connect_async
from queueing.errors import JobError, ResultTimeout
from queueing.jobs import JobRecord
from queueing.keys import Keys
from queueing.settings import Settings
from tests.conftest import ROOT, start_worker, worker_env
from workers.worker import publish

KEYS = Keys()


class Workers:
    """Starts real ``batchline worker`` processes and kills whatever is left at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *targets: str,
        burst: bool = False,
        name: str | None = None,
        settings: Settings | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        # Test pipelines need no torch: device "cpu" spares each start-up its import (~1 s).
        env = {"BATCHLINE_DEVICE": "cpu", **env}
        process = start_worker(settings or self.settings, *targets, burst=burst, name=name, **env)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(10)


def register(settings: Settings, *pipelines: Pipeline) -> None:
    """Publish the pipelines' specs and create their groups, as a worker would at start-up,
    so that jobs can be submitted before any worker runs."""

    async def go() -> None:
        client = connect_async(settings)
        try:
            await publish(client, settings, [p.compile() for p in pipelines])
        finally:
            await client.aclose()

    asyncio.run(go())


def batchline_cli(
    settings: Settings, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``batchline ARGS`` run as a user would, against ``settings`` (its output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "batchline", *args],
        env=worker_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (and has not waited for), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    limit = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > limit:
            raise AssertionError(f"after {timeout:g}s: {what}")
        time.sleep(0.02)


def wait_finished(jobs: Sequence[Job], timeout: float) -> list[JobRecord]:
    """Wait (at most ``timeout`` seconds in all) until every job has ended; their records."""
    limit = time.monotonic() + timeout
    for job in jobs:
        try:
            job.result(timeout=max(0.01, limit - time.monotonic()))
        except ResultTimeout:
            states = [str(j.status()) for j in jobs]
            unfinished = sum(s in ("queued", "running") for s in states)
            raise AssertionError(
                f"after {timeout:g}s, {unfinished} of {len(jobs)} jobs have not ended: {states}"
            ) from None
        except JobError:
            pass
    return [job.info() for job in jobs]


def wait_exit(process: subprocess.Popen[bytes], timeout: float, what: str = "worker") -> int:
    """The exit status of ``process``; fail if it is still running after ``timeout`` seconds."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # a worker logs what its tasks wait for
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(2)
        raise AssertionError(
            f"the {what} (pid {process.pid}) still runs after {timeout:g}s"
        ) from None


def stat(r: redis.Redis, stage: str, what: str) -> int:
    """A stage's counter (``done``, ``next``, ``join``, ``failed``, ``dead``, ``redelivered``...)."""
    return int(r.hget(KEYS.stats(0), f"{stage}:{what}") or 0)


def backlog(r: redis.Redis, stage: str) -> tuple[int, int]:
    """(entries in the stage's stream, entries pending in its group)."""
    stream = KEYS.stream(0, stage)
    if not r.exists(stream):
        return 0, 0
    return int(r.xlen(stream)), int(r.xpending(stream, stage)["pending"])


def assert_drained(r: redis.Redis, stages: Iterable[str]) -> None:
    """Streams hold only what is queued or in flight: nothing, once every job has ended."""
    for stage in stages:
        assert backlog(r, stage) == (0, 0), f"stage {stage}: (XLEN, pending) after the run"
