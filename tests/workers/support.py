"""Helpers for the worker tests: registering pipelines, bounded waits, reading what happened."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence

import redis

from pipelines.dsl import Pipeline
from queueing.client import Job
from queueing.connection import connect_async
from queueing.errors import JobError, ResultTimeout
from queueing.jobs import JobRecord
from queueing.keys import Keys
from queueing.settings import Settings
from tests.pipelines import BATCHES, SEEN
from workers.worker import publish

KEYS = Keys()


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
            raise AssertionError(
                f"after {timeout:g}s, {sum(not s.startswith(('done', 'failed', 'expired', 'cancelled')) for s in states)} "
                f"of {len(jobs)} jobs have not ended: {states}"
            ) from None
        except JobError:
            pass
    return [job.info() for job in jobs]


def wait_exit(process: subprocess.Popen[bytes], timeout: float, what: str = "worker") -> int:
    """The exit status of ``process``; fail if it is still running after ``timeout`` seconds."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the {what} (pid {process.pid}) still runs after {timeout:g}s"
        ) from None


def seen(r: redis.Redis, stage: str) -> list[int]:
    """Every ``x`` a handler of ``stage`` received, in order (repeats included)."""
    return [int(x) for x in r.lrange(SEEN + stage, 0, -1)]


def batches(r: redis.Redis, stage: str) -> list[int]:
    """The size of every handler call of ``stage``, in order."""
    return [int(n) for n in r.lrange(BATCHES + stage, 0, -1)]


def stat(r: redis.Redis, stage: str, what: str) -> int:
    """A stage's counter (``done``, ``failed``, ``dead``, ``redelivered``, ``fenced``...)."""
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
        assert r.hlen(KEYS.entries(0, stage)) == 0, f"stage {stage}: entries left in its index"
