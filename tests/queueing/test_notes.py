"""A batch of new entries goes through NOTE, not START (see ``queueing/lua/start.lua``): it
checks its jobs as START does but writes none of them, the attempt it makes is counted only if
its worker dies before FINISH (CHARGE, once), RUNNING shows a long batch's jobs running, and
FINISH writes their started_at."""

from __future__ import annotations

import time

import pytest
import redis

from queueing.keys import Keys
from queueing.scripts import Kind, Start
from queueing.settings import Settings
from queueing.streams import Delivery, Outcome

from .helpers import cancel, job_hash, job_of, read_all, register, run, stage_queue, submit

KEYS = Keys()
STAGE = "echo.run"
A, B = "two.a", "two.b"


@pytest.fixture(autouse=True)
def _pipelines(settings: Settings, redis_client: redis.Redis) -> None:
    register(redis_client, settings)
    register(redis_client, settings, "two", ("a", "b"))


def _jobs(deliveries: list[Delivery]) -> list[tuple[Delivery, str]]:
    return [(d, job_of(d)) for d in deliveries]


def _noted(redis_client: redis.Redis, stage: str = STAGE) -> set[str]:
    return {field.decode() for field in redis_client.hgetall(KEYS.started(0, stage))}


def test_a_noted_batch_runs_its_live_jobs_and_writes_them_only_when_it_finishes(
    redis_client: redis.Redis, settings: Settings
) -> None:
    jobs = submit(settings, "echo", 1, 2, 3)
    cancel(settings, jobs[1])
    started = time.time()

    async def scenario() -> None:
        async with stage_queue(settings, STAGE) as queue:
            deliveries = await read_all(queue, 3)
            answers = await queue.note(_jobs(deliveries))
            assert answers == [Start.RUN, Start.CANCELLED, Start.RUN]
            live = [d for d, answer in zip(deliveries, answers, strict=True) if answer == "run"]
            assert _noted(redis_client) == {d.entry_id for d in live}
            for job in (jobs[0], jobs[2]):  # (checked, not written)
                assert job_hash(redis_client, settings, job)["status"] == "queued"
                assert "started_at" not in job_hash(redis_client, settings, job)
            skipped = Outcome(deliveries[1], jobs[1], Kind.SKIP)
            ran = [Outcome(d, job_of(d), Kind.DONE, b"1", timing=b"{}") for d in live]
            outcomes = [*ran, skipped]
            assert await queue.finish(outcomes, started) == [True] * 3

    run(scenario())
    assert not redis_client.exists(KEYS.started(0, STAGE)), "FINISH clears the notes"
    for job in (jobs[0], jobs[2]):
        stored = job_hash(redis_client, settings, job)
        assert stored["status"] == "done"
        assert stored["started_at"] == repr(started)
        assert f"a:{STAGE}" not in stored, "an attempt that finished is never counted"
    assert job_hash(redis_client, settings, jobs[1])["status"] == "cancelled"


def test_an_unfinished_noted_attempt_is_counted_once_when_its_entry_is_recovered(
    redis_client: redis.Redis, settings: Settings
) -> None:
    (job,) = submit(settings, "echo", 1)
    field = f"a:{STAGE}"

    async def scenario() -> None:
        async with stage_queue(settings, STAGE, "died") as first:
            (delivery,) = await read_all(first, 1)
            assert await first.note([(delivery, job)]) == [Start.RUN]
        # (the worker "died" before FINISH; whoever recovers the entry counts its attempt)
        async with stage_queue(settings, STAGE, "heir") as heir:
            assert await heir.attempts([delivery]) == [1]
            assert await heir.attempts([delivery]) == [1], "counted once"
            assert job_hash(redis_client, settings, job)[field] == "1"
            assert _noted(redis_client) == set()
            # Recovered, it goes through START, which counts on from there.
            assert await heir.start([(delivery, job)]) == [Start.RUN]
            stored = job_hash(redis_client, settings, job)
            assert (stored["status"], stored[field]) == ("running", "2")
            # Out of attempts: START dead-letters it, though it never showed running before.
            redis_client.hset(KEYS.job(job), mapping={"status": "queued", field: "3"})
            assert await heir.start([(delivery, job)]) == [Start.DEAD]

    assert settings.max_deliveries == 3
    run(scenario())


def test_an_entry_never_noted_is_not_charged(redis_client: redis.Redis, settings: Settings) -> None:
    """Read ahead by a worker that died before it got to it: recovered without an attempt."""
    (job,) = submit(settings, "echo", 1)

    async def scenario() -> None:
        async with stage_queue(settings, STAGE, "died") as first:
            (delivery,) = await read_all(first, 1)
        async with stage_queue(settings, STAGE, "heir") as heir:
            assert await heir.attempts([delivery]) == [0]

    run(scenario())
    assert f"a:{STAGE}" not in job_hash(redis_client, settings, job)


def test_running_marks_the_jobs_still_queued_only(
    redis_client: redis.Redis, settings: Settings
) -> None:
    jobs = submit(settings, "echo", 1, 2)
    cancel(settings, jobs[1])
    started = time.time()

    async def scenario() -> None:
        async with stage_queue(settings, STAGE) as queue:
            await queue.mark_running([(0, job) for job in jobs], started)

    run(scenario())
    first, second = (job_hash(redis_client, settings, job) for job in jobs)
    assert (first["status"], first["started_at"]) == ("running", repr(started))
    assert second["status"] == "cancelled"
    assert "started_at" not in second


def test_a_job_handed_on_from_a_noted_batch_is_running_since_that_batch(
    redis_client: redis.Redis, settings: Settings
) -> None:
    (job,) = submit(settings, "two", 5)
    first_started = time.time()

    async def stage(name: str, started: float, kind: Kind) -> None:
        async with stage_queue(settings, name) as queue:
            (delivery,) = await read_all(queue, 1)
            assert await queue.note([(delivery, job)]) == [Start.RUN]
            targets = (B,) if kind is Kind.NEXT else ()
            outcome = Outcome(delivery, job, kind, b"6", targets=targets, timing=b"{}")
            assert await queue.finish([outcome], started) == [True]

    run(stage(A, first_started, Kind.NEXT))
    stored = job_hash(redis_client, settings, job)
    assert (stored["status"], stored["started_at"]) == ("running", repr(first_started))
    run(stage(B, time.time(), Kind.DONE))
    stored = job_hash(redis_client, settings, job)
    assert (stored["status"], stored["result"]) == ("done", "6")
    assert stored["started_at"] == repr(first_started), "the job started at its first stage"
    assert not redis_client.exists(KEYS.started(0, A))
    assert not redis_client.exists(KEYS.started(0, B))
