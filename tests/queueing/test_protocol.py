"""The stream protocol, driven by hand through StageQueue: read -> start -> finish, the
hand-off to the next stage, and the fence that keeps a result from being published twice."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from queueing.client import AsyncClient
from queueing.errors import ConfigError, JobFailed
from queueing.keys import Keys, new_job_id
from queueing.message import Message, dumps, loads
from queueing.settings import Settings
from queueing.streams import Delivery, Outcome

from .helpers import (
    Subscription,
    cancel,
    done,
    job_hash,
    job_of,
    outcome,
    pending,
    process,
    read_all,
    record,
    register,
    run,
    stage_queue,
    submit,
)

KEYS = Keys()
A, B = "two.a", "two.b"


@pytest.fixture(autouse=True)
def _pipelines(settings: Settings, redis_client: redis.Redis) -> None:
    register(redis_client, settings)
    register(redis_client, settings, "two", ("a", "b"))


def stats(redis_client: redis.Redis, partition: int = 0) -> dict[str, int]:
    raw = redis_client.hgetall(KEYS.stats(partition))
    return {k.decode(): int(v) for k, v in raw.items()}


def test_finish_done_publishes_the_result_acks_and_deletes(
    redis_client: redis.Redis, settings: Settings
) -> None:
    job = submit(settings, "echo", {"n": 2})[0]
    stream = KEYS.stream(0, "echo.run")
    channel = job_hash(redis_client, settings, job)["reply"]

    async def scenario() -> None:
        async with stage_queue(settings, "echo.run") as queue:
            (delivery,) = await read_all(queue, 1)
            assert delivery.partition == 0
            message = Message.decode(delivery.fields)
            assert message.job_id == job
            # Read but not finished: in flight, so still in the stream and pending on us.
            assert await queue.backlog() == 1
            assert [p["consumer"] for p in pending(redis_client, stream, "echo.run")] == [b"c1"]
            assert await queue.start([(delivery, job)]) == ["run"]
            stored = job_hash(redis_client, settings, job)
            assert stored["status"] == "running"
            assert float(stored["started_at"]) <= time.time()
            outcome = Outcome(delivery, job, "done", dumps({"n": 4}), timing=b"")
            assert await queue.finish([outcome]) == [True]
            assert await queue.backlog() == 0

    with Subscription(redis_client, channel) as subscription:
        run(scenario())
        published = subscription.drain()
    stored = job_hash(redis_client, settings, job)
    assert stored["status"] == "done"
    assert loads(stored["result"]) == {"n": 4}
    assert float(stored["finished_at"]) >= float(stored["started_at"])
    assert 0 < redis_client.ttl(KEYS.job(job)) <= settings.result_ttl_s
    assert redis_client.xlen(stream) == 0  # XDEL: the stream holds only what is in flight
    assert pending(redis_client, stream, "echo.run") == []  # XACK
    assert len(published) == 1
    assert job.encode() in published[0]
    assert stats(redis_client)["echo.run:done"] == 1
    assert outcome(redis_client, settings, job) == {"n": 4}


def test_start_answers_what_forbids_running(redis_client: redis.Redis, settings: Settings) -> None:
    queued, cancelled, finished = submit(settings, "echo", 0, 1, 2)
    cancel(settings, cancelled)

    async def scenario() -> None:
        async with stage_queue(settings, "echo.run") as queue:
            deliveries = await read_all(queue, 3)
            by_job = {job_of(d): d for d in deliveries}
            await queue.finish([done(by_job[finished], "early")])
            ghost = new_job_id(0)
            answers = await queue.start(
                [
                    (by_job[queued], queued),
                    (by_job[cancelled], cancelled),
                    (by_job[finished], finished),
                    (by_job[queued], ghost),
                ]
            )
            assert answers == ["run", "cancelled", "done", "missing"]
            started_at = job_hash(redis_client, settings, queued)["started_at"]
            # A redelivered job (already running) may run again; its start time is kept.
            assert await queue.start([(by_job[queued], queued)]) == ["run"]
            assert job_hash(redis_client, settings, queued)["started_at"] == started_at
            assert not redis_client.exists(KEYS.job(ghost))

    run(scenario())


def test_next_hands_off_to_the_next_stage_in_the_same_step(
    redis_client: redis.Redis, settings: Settings
) -> None:
    job = submit(settings, "two", 10)[0]

    async def first_stage() -> None:
        async with stage_queue(settings, A) as queue:
            (delivery,) = await read_all(queue, 1)
            assert await queue.start([(delivery, job)]) == ["run"]
            timing = dumps(
                {
                    "stage": A,
                    "queue_wait_s": 0.0,
                    "batch_size": 1,
                    "compute_s": 0.001,
                    "started_at": time.time(),
                }
            )
            outcome = Outcome(delivery, job, "next", dumps(11), timing=timing, targets=(B,))
            assert await queue.finish([outcome]) == [True]

    run(first_stage())
    # One step: the first stage's entry is gone and acked, the second stage's is there.
    assert redis_client.xlen(KEYS.stream(0, A)) == 0
    assert pending(redis_client, KEYS.stream(0, A), A) == []
    ((entry_id, fields),) = redis_client.xrange(KEYS.stream(0, B))
    assert Message.decode(fields).job_id == job
    assert Message.decode(fields).value() == 11
    assert job_hash(redis_client, settings, job)["entry"] == entry_id.decode()
    stored = job_hash(redis_client, settings, job)
    assert stored["status"] == "running"
    assert stored["stage"] == B
    assert "result" not in stored
    assert loads(stored["timings"])["stage"] == A
    assert redis_client.ttl(KEYS.job(job)) == -1
    assert stats(redis_client)[f"{A}:next"] == 1

    assert run(process(settings, B, 1, result=lambda v: v * 2)) == [(job, "run")]
    assert outcome(redis_client, settings, job) == 22
    assert redis_client.xlen(KEYS.stream(0, B)) == 0
    assert [t.stage for t in record(redis_client, settings, job).timings][:1] == [A]


def test_one_finish_call_ends_a_mixed_batch(redis_client: redis.Redis, settings: Settings) -> None:
    jobs = submit(settings, "two", 0, 1, 2, 3)

    async def scenario() -> None:
        async with stage_queue(settings, A) as queue:
            deliveries = await read_all(queue, 4)
            assert [job_of(d) for d in deliveries] == jobs
            assert await queue.start([(d, job_of(d)) for d in deliveries]) == ["run"] * 4
            d0, d1, d2, d3 = deliveries
            outcomes = [
                Outcome(d0, jobs[0], "done", dumps("zero")),
                Outcome(d1, jobs[1], "failed", "boom"),
                Outcome(d2, jobs[2], "expired", "too late"),
                Outcome(d3, jobs[3], "next", b"3", targets=(B,)),
            ]
            assert await queue.finish(outcomes) == [True] * 4

    run(scenario())
    statuses = [job_hash(redis_client, settings, j)["status"] for j in jobs]
    assert statuses == ["done", "failed", "expired", "running"]
    assert job_hash(redis_client, settings, jobs[1])["error"] == "boom"
    with pytest.raises(JobFailed) as info:
        outcome(redis_client, settings, jobs[1])
    assert (info.value.error, info.value.stage) == ("boom", A)
    assert redis_client.xlen(KEYS.stream(0, A)) == 0
    assert redis_client.xlen(KEYS.stream(0, B)) == 1
    assert pending(redis_client, KEYS.stream(0, A), A) == []


def test_finish_of_an_entry_that_is_not_ours_writes_nothing(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """The fence: an entry another consumer claimed (or that was never delivered to us)
    is left alone — no result, no ack, no hand-off."""
    job = submit(settings, "two", 1)[0]

    async def scenario() -> None:
        async with (
            stage_queue(settings, A, "owner") as owner,
            stage_queue(settings, A, "stranger") as stranger,
        ):
            (delivery,) = await read_all(owner, 1)
            await owner.start([(delivery, job)])
            outcome = Outcome(delivery, job, "next", b"1", targets=(B,))
            assert await stranger.finish([outcome]) == [False]
            assert await stranger.finish([done(delivery, "stolen")]) == [False]
            assert redis_client.xlen(KEYS.stream(0, A)) == 1
            assert redis_client.xlen(KEYS.stream(0, B)) == 0
            assert job_hash(redis_client, settings, job)["status"] == "running"
            assert stats(redis_client)[f"{A}:fenced"] == 2
            # The owner's own finish still goes through.
            assert await owner.finish([outcome]) == [True]
            # ... once: a repeated finish (a retry after a lost reply) is a no-op.
            assert await owner.finish([outcome]) == [False]

    run(scenario())
    assert redis_client.xlen(KEYS.stream(0, A)) == 0
    assert redis_client.xlen(KEYS.stream(0, B)) == 1


@pytest.mark.parametrize("slow_finishes_first", [True, False])
def test_a_claim_race_publishes_exactly_one_result(
    redis_client: redis.Redis, settings: Settings, slow_finishes_first: bool
) -> None:
    """A slow consumer's entry is claimed by another after the visibility timeout; both
    finish. Whoever holds the entry when finishing wins; the other is fenced, so exactly
    one result is written and one wake-up published."""
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "echo", 1)[0]
    stream = KEYS.stream(0, "echo.run")
    channel = job_hash(redis_client, settings, job)["reply"]

    async def scenario() -> None:
        async with (
            stage_queue(quick, "echo.run", "slow") as slow,
            stage_queue(quick, "echo.run", "rescuer") as rescuer,
        ):
            (delivery,) = await read_all(slow, 1)
            assert await slow.start([(delivery, job)]) == ["run"]
            await asyncio.sleep(0.15)  # the slow consumer stalls past the visibility timeout
            claimed, dead = await rescuer.claim(10)
            assert dead == 0
            assert [d.entry_id for d in claimed] == [delivery.entry_id]
            assert claimed[0].fields == delivery.fields
            (entry,) = pending(redis_client, stream, "echo.run")
            assert (entry["consumer"], entry["times_delivered"]) == (b"rescuer", 2)
            assert await rescuer.start([(claimed[0], job)]) == ["run"]
            if slow_finishes_first:
                assert await slow.finish([done(delivery, "slow")]) == [False]
                assert job_hash(redis_client, settings, job)["status"] == "running"
                assert redis_client.xlen(stream) == 1
                assert await rescuer.finish([done(claimed[0], "rescuer")]) == [True]
            else:
                assert await rescuer.finish([done(claimed[0], "rescuer")]) == [True]
                assert await slow.finish([done(delivery, "slow")]) == [False]

    with Subscription(redis_client, channel) as subscription:
        run(scenario())
        published = subscription.drain()
    assert outcome(redis_client, settings, job) == "rescuer"
    assert [m for m in published if job.encode() in m] == published
    assert len(published) == 1
    assert redis_client.xlen(stream) == 0
    assert pending(redis_client, stream, "echo.run") == []
    counters = stats(redis_client)
    assert (counters["echo.run:done"], counters["echo.run:fenced"]) == (1, 1)
    assert counters["echo.run:redelivered"] == 1


def test_a_fenced_hand_off_adds_nothing_to_the_next_stage(
    redis_client: redis.Redis, settings: Settings
) -> None:
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "two", 5)[0]

    async def scenario() -> None:
        async with (
            stage_queue(quick, A, "slow") as slow,
            stage_queue(quick, A, "rescuer") as rescuer,
        ):
            (delivery,) = await read_all(slow, 1)
            await asyncio.sleep(0.15)
            (claimed,), _ = await rescuer.claim(10)
            onward = Outcome(delivery, job, "next", b"5", targets=(B,))
            assert await slow.finish([onward]) == [False]
            assert redis_client.xlen(KEYS.stream(0, B)) == 0
            onward.delivery = claimed
            assert await rescuer.finish([onward]) == [True]

    run(scenario())
    assert redis_client.xlen(KEYS.stream(0, B)) == 1  # handed on exactly once
    assert redis_client.xlen(KEYS.stream(0, A)) == 0


def test_claim_takes_nothing_that_is_not_idle(
    redis_client: redis.Redis, settings: Settings
) -> None:
    submit(settings, "echo", 1)[0]

    async def scenario() -> None:
        async with (
            stage_queue(settings, "echo.run", "a") as a,
            stage_queue(settings, "echo.run", "b") as b,
        ):
            assert len(await read_all(a, 1)) == 1
            assert await b.claim(10) == ([], 0)

    run(scenario())
    (entry,) = pending(redis_client, KEYS.stream(0, "echo.run"), "echo.run")
    assert entry["consumer"] == b"a"


def test_a_restarted_consumer_rereads_its_own_pending_entries(
    redis_client: redis.Redis, settings: Settings
) -> None:
    job = submit(settings, "echo", 8)[0]

    async def crashed() -> None:
        async with stage_queue(settings, "echo.run", "w-1") as queue:
            assert len(await read_all(queue, 1)) == 1  # ... and never finished

    async def restarted() -> None:
        async with stage_queue(settings, "echo.run", "w-1") as queue:
            assert await queue.read(10, 50) == []  # nothing new
            (delivery,) = await queue.read(10, None, own_pending=True)
            assert job_of(delivery) == job
            await queue.start([(delivery, job)])
            assert await queue.finish([done(delivery, 9)]) == [True]

    run(crashed())
    run(restarted())
    assert outcome(redis_client, settings, job) == 9


def test_groups_read_entries_submitted_before_they_existed(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A pipeline in the registry with no consumer group yet (no worker has started): its
    submissions are read once a worker creates the group."""
    register(redis_client, settings, "fresh")
    redis_client.delete(KEYS.stream(0, "fresh.run"))  # the stream and its group are gone
    job = submit(settings, "fresh", 1)[0]
    assert run(process(settings, "fresh.run", 1)) == [(job, "run")]

    async def twice() -> None:
        async with stage_queue(settings, "fresh.run") as queue:
            await queue.ensure_groups()  # again: harmless

    run(twice())
    assert outcome(redis_client, settings, job) == 1


def test_one_consumer_serves_every_partition(redis_client: redis.Redis, settings: Settings) -> None:
    settings = settings.replace(partitions=3)
    register(redis_client, settings)

    async def submit_one_by_one() -> list[str]:
        async with AsyncClient(settings) as client:  # submits go round the partitions
            return [(await client.submit("echo", i)).id for i in range(9)]

    jobs = run(submit_one_by_one())
    assert sorted(j.split("-")[0] for j in jobs) == ["0", "0", "0", "1", "1", "1", "2", "2", "2"]
    for partition in range(3):
        assert redis_client.xlen(KEYS.stream(partition, "echo.run")) == 3

    async def scenario() -> None:
        async with stage_queue(settings, "echo.run") as queue:
            assert await queue.backlog() == 9
            deliveries = await read_all(queue, 9)
            assert {d.partition for d in deliveries} == {0, 1, 2}
            for d in deliveries:
                assert d.partition == int(job_of(d).split("-")[0])
            await queue.start([(d, job_of(d)) for d in deliveries])
            outcomes = [done(d, loads(Message.decode(d.fields).data) + 1) for d in deliveries]
            assert await queue.finish(outcomes) == [True] * 9
            assert await queue.backlog() == 0

    run(scenario())
    assert [outcome(redis_client, settings, j) for j in jobs] == list(range(1, 10))
    for partition in range(3):
        assert redis_client.xlen(KEYS.stream(partition, "echo.run")) == 0


def test_a_finished_record_outlives_the_finish_for_any_valid_ttl(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """result_ttl_s is a float setting; one under a second validates, so it must not turn
    into 'EXPIRE 0' (which deletes the result at once) or 'SET ... EX 0' (an error)."""
    try:
        short = settings.replace(result_ttl_s=0.5)
    except ValueError:
        return  # refusing such a TTL up front is a fine answer too
    register(redis_client, short)
    job = submit(short, "echo", 1, idempotency_keys=["k"])[0]
    run(process(short, "echo.run", 1))
    assert redis_client.exists(KEYS.job(job)), "the result vanished as it was written"
    assert outcome(redis_client, short, job) == 1


def test_a_fan_out_is_joined_once_when_every_branch_is_in(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """split hands each item to two branches at once; each branch's 'join' outcome parks its
    output in the job's join hash, and the last one in hands ``{branch: output}`` to the join
    stage, in the same step. A branch entry claimed away from a stalled consumer joins once."""
    register(redis_client, settings, "fan", ("split", "x", "y", "merge"))
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "fan", 3)[0]
    merge = KEYS.stream(0, "fan.merge")

    def join(delivery: Delivery, branch: str, value: object) -> Outcome:
        return Outcome(
            delivery,
            job,
            "join",
            dumps(value),
            targets=("fan.merge",),
            branch=branch,
            fan_in=2,
        )

    async def scenario() -> None:
        async with stage_queue(settings, "fan.split") as split:
            (delivery,) = await read_all(split, 1)
            fan_out = Outcome(delivery, job, "next", b"3", targets=("fan.x", "fan.y"))
            assert await split.finish([fan_out]) == [True]
        assert redis_client.xlen(KEYS.stream(0, "fan.x")) == 1
        assert redis_client.xlen(KEYS.stream(0, "fan.y")) == 1

        async with stage_queue(quick, "fan.x") as x:
            (delivery,) = await read_all(x, 1)
            assert await x.finish([join(delivery, "x", 30)]) == [True]
        assert redis_client.xlen(merge) == 0  # one branch in: nothing to join yet
        assert redis_client.hgetall(KEYS.joins(job)) == {b"x": b"30"}

        async with (
            stage_queue(quick, "fan.y", "stalled") as stalled,
            stage_queue(quick, "fan.y", "rescuer") as rescuer,
        ):
            (delivery,) = await read_all(stalled, 1)
            await asyncio.sleep(0.15)
            (claimed,), _ = await rescuer.claim(10)
            assert await stalled.finish([join(delivery, "y", "stale")]) == [False]
            assert redis_client.xlen(merge) == 0
            assert await rescuer.finish([join(claimed, "y", [3, 3])]) == [True]
            assert await stalled.finish([join(delivery, "y", "stale")]) == [False]

    run(scenario())
    ((_, fields),) = redis_client.xrange(merge)
    assert Message.decode(fields).value() == {"x": 30, "y": [3, 3]}
    assert not redis_client.exists(KEYS.joins(job))
    assert job_hash(redis_client, settings, job)["stage"] == "fan.merge"
    run(process(settings, "fan.merge", 1, result=lambda v: v["x"] + len(v["y"])))
    assert outcome(redis_client, settings, job) == 32
    for stage in ("split", "x", "y", "merge"):
        assert redis_client.xlen(KEYS.stream(0, f"fan.{stage}")) == 0


def test_a_blocking_read_may_last_as_long_as_block_ms_says(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """block_ms has no upper bound, but redis-py (>= 6) gives every connection a 5 s socket
    timeout by default: a longer XREADGROUP BLOCK on an idle stage must still come back empty,
    not fail with a timeout (a worker would log it as Redis being down, over and over)."""
    try:
        patient = settings.replace(block_ms=5200)
    except ConfigError:
        return  # refusing such a block_ms up front is a fine answer too

    async def idle_read() -> list[Delivery]:
        async with stage_queue(patient, "echo.run") as queue:
            return await queue.read(1, patient.block_ms)

    assert run(idle_read()) == []
