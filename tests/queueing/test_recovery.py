"""Recovery: heart-beating keeps entries, idle ones are claimed, entries that keep failing are
dead-lettered, and entries that cannot be run (deleted payload, garbage fields) fail their job
with a reason instead of crashing anything."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis

from queueing.client import Client
from queueing.errors import JobFailed
from queueing.keys import Keys
from queueing.message import Message, job_id_of
from queueing.settings import Settings
from queueing.streams import Outcome, too_many_attempts

from .helpers import (
    done,
    job_hash,
    job_of,
    outcome,
    pending,
    read_all,
    register,
    run,
    stage_queue,
    submit,
)

KEYS = Keys()
STAGE = "echo.run"
STREAM = KEYS.stream(0, STAGE)
DEAD = KEYS.dead(0, STAGE)


@pytest.fixture(autouse=True)
def _pipelines(settings: Settings, redis_client: redis.Redis) -> None:
    register(redis_client, settings)


def _fields(raw: dict[bytes, bytes]) -> dict[str, bytes]:
    return {k.decode(): v for k, v in raw.items()}


def test_touch_keeps_a_live_consumers_entries_from_being_claimed(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Four entries read together; three are touched (in one call) half-way through the
    visibility timeout. At a moment past the timeout for the untouched one, only it is
    claimed."""
    visibility = settings.replace(visibility_timeout_s=1.5)
    kept, lost, *also_kept = submit(settings, "echo", "kept", "lost", "kept 2", "kept 3")

    async def scenario() -> None:
        async with (
            stage_queue(visibility, STAGE, "busy") as busy,
            stage_queue(visibility, STAGE, "idle") as other,
        ):
            deliveries = await read_all(busy, 4)
            by_job = {job_of(d): d for d in deliveries}
            await asyncio.sleep(0.8)
            await busy.touch([by_job[job] for job in (kept, *also_kept)])
            await asyncio.sleep(0.8)  # 1.6 s since the read (> 1.5), 0.8 s since the touch
            claimed, dead = await other.claim(10)
            assert dead == 0
            assert [job_of(d) for d in claimed] == [lost]
            owners = {
                p["message_id"].decode(): p["consumer"]
                for p in pending(redis_client, STREAM, STAGE)
            }
            assert owners == {
                **{by_job[job].entry_id: b"busy" for job in (kept, *also_kept)},
                by_job[lost].entry_id: b"idle",
            }
            # The kept entry is still ours to finish; the lost one is not.
            assert await busy.finish([done(by_job[kept], 1)]) == [True]
            assert await busy.finish([done(by_job[lost], 2)]) == [False]

    run(scenario())


def test_touch_does_not_take_back_an_entry_claimed_by_another(
    redis_client: redis.Redis, settings: Settings
) -> None:
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "echo", 1)[0]

    async def scenario() -> None:
        async with (
            stage_queue(quick, STAGE, "slow") as slow,
            stage_queue(quick, STAGE, "rescuer") as rescuer,
        ):
            (delivery,) = await read_all(slow, 1)
            await asyncio.sleep(0.15)
            claimed, _ = await rescuer.claim(10)
            assert len(claimed) == 1
            await slow.touch([delivery])
            (entry,) = pending(redis_client, STREAM, STAGE)
            assert entry["consumer"] == b"rescuer"
            assert entry["times_delivered"] == 2
            assert await slow.finish([done(delivery, "slow")]) == [False]
            assert await rescuer.finish([done(claimed[0], "rescuer")]) == [True]

    run(scenario())
    assert outcome(redis_client, settings, job) == "rescuer"


def test_an_entry_past_max_deliveries_is_dead_lettered_and_its_job_fails(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Every consumer that takes the entry starts its job (as a worker does before running
    the model) and then stalls on it. It is handed out max_deliveries times, then moved to
    the dead-letter stream, and its job fails saying why."""
    quick = settings.replace(visibility_timeout_s=0.05, max_deliveries=3)
    job = submit(settings, "echo", {"poison": True})[0]
    holders: list[str] = []  # who got the entry, delivery by delivery

    async def scenario() -> None:
        async with stage_queue(quick, STAGE, "w0") as first:
            (delivery,) = await read_all(first, 1)
            assert await first.start([(delivery, job)]) == ["run"]
            holders.append(first.consumer)
            for n in range(1, 10):
                await asyncio.sleep(0.1)  # whoever holds it stalls past the visibility timeout
                async with stage_queue(quick, STAGE, f"w{n}") as rescuer:
                    claimed, gone = await rescuer.claim(10)
                    assert gone == 0
                    assert [d.entry_id for d in claimed] == [delivery.entry_id]
                    if await rescuer.start([(claimed[0], job)]) == ["dead"]:
                        # (what a worker does when START says so)
                        reason = too_many_attempts(quick.max_deliveries)
                        dead = Outcome(claimed[0], job, "dead", reason)
                        assert await rescuer.finish([dead]) == [True]
                        break
                    holders.append(rescuer.consumer)
            # Neither the first holder nor the last can finish it any more.
            assert await first.finish([done(delivery, "late")]) == [False]

    run(scenario())
    assert holders == ["w0", "w1", "w2"]
    stored = job_hash(redis_client, settings, job)
    assert stored["status"] == "failed"
    assert re.search(r"dead-lettered after 3\b", stored["error"]), stored["error"]
    with pytest.raises(JobFailed, match="dead-lettered") as info:
        outcome(redis_client, settings, job)
    assert info.value.stage == STAGE
    # Gone from the stage, kept in its dead-letter stream with the reason and the payload.
    assert redis_client.xlen(STREAM) == 0
    assert pending(redis_client, STREAM, STAGE) == []
    ((_, raw),) = redis_client.xrange(DEAD)
    letter = _fields(raw)
    assert b"dead-lettered" in letter["reason"]
    assert letter["job"] == job.encode()
    assert Message.decode(raw).value() == {"poison": True}
    assert redis_client.hget(KEYS.stats(0), f"{STAGE}:dead") == b"1"


def test_a_pending_entry_whose_payload_was_deleted_fails_its_job_once_waited_for(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """An entry deleted from outside (an XTRIM) while pending names no job any more: the claim
    drops it from the group. Its job does not wait for ever: a waiter's re-check of a job live
    past the visibility timeout finds its current entry gone and fails it."""
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "echo", 1)[0]

    async def scenario() -> None:
        async with stage_queue(quick, STAGE, "a") as a, stage_queue(quick, STAGE, "b") as b:
            (delivery,) = await read_all(a, 1)
            assert redis_client.xdel(STREAM, delivery.entry_id) == 1
            await asyncio.sleep(0.15)
            assert await b.claim(10) == ([], 1)

    run(scenario())
    assert pending(redis_client, STREAM, STAGE) == []
    assert job_hash(redis_client, settings, job)["status"] == "queued"
    with Client(quick) as client, pytest.raises(JobFailed, match="deleted"):
        client.job(job).result(timeout=10)
    record = job_hash(redis_client, settings, job)
    assert record["status"] == "failed"
    assert "deleted" in record["error"]


def test_an_own_pending_entry_whose_payload_was_deleted_is_dead_lettered(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A restarted consumer re-reads its pending entries; one whose payload is gone comes
    back without fields. Finishing it as 'dead' without a job id acks it and dead-letters
    it; its job fails once waited for (as above)."""
    quick = settings.replace(visibility_timeout_s=0.05)
    job = submit(settings, "echo", 1)[0]
    entry_ids: list[str] = []

    async def scenario() -> None:
        async with stage_queue(settings, STAGE, "w") as queue:
            (delivery,) = await read_all(queue, 1)
            entry_ids.append(delivery.entry_id)
            redis_client.xdel(STREAM, delivery.entry_id)
            (again,) = await queue.read(10, None, own_pending=True)
            assert again.entry_id == delivery.entry_id
            assert again.fields is None
            assert job_id_of(again.fields) is None
            outcome = Outcome(again, "", "dead", "undecodable entry: it has no fields")
            assert await queue.finish([outcome]) == [True]

    run(scenario())
    assert pending(redis_client, STREAM, STAGE) == []
    ((_, letter),) = redis_client.xrange(DEAD)
    assert letter[b"entry"] == entry_ids[0].encode()
    assert letter[b"reason"] == b"undecodable entry: it has no fields"
    with Client(quick) as client, pytest.raises(JobFailed, match="deleted"):
        client.job(job).result(timeout=10)


def test_a_dead_outcome_for_a_garbage_entry_fails_its_job_and_acks_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """An entry with a readable job id but no payload (written by hand): the worker's 'dead'
    outcome fails that job, acks and deletes the entry, and keeps it as a dead letter."""
    job = submit(settings, "echo", 1)[0]
    redis_client.xdel(STREAM, *[e for e, _ in redis_client.xrange(STREAM)])  # its real entry
    garbage_id = redis_client.xadd(STREAM, {"job": job, "junk": b"\xff\x00"}).decode()

    async def scenario() -> None:
        async with stage_queue(settings, STAGE) as queue:
            (delivery,) = await read_all(queue, 1)
            assert delivery.entry_id == garbage_id
            with pytest.raises(ValueError, match="no data field"):
                Message.decode(delivery.fields)
            recovered = job_id_of(delivery.fields)
            assert recovered == job
            outcome = Outcome(delivery, recovered, "dead", "undecodable entry: no data field")
            assert await queue.finish([outcome]) == [True]

    run(scenario())
    record = job_hash(redis_client, settings, job)
    assert record["status"] == "failed"
    assert record["error"] == "undecodable entry: no data field"
    assert redis_client.xlen(STREAM) == 0
    assert pending(redis_client, STREAM, STAGE) == []
    ((_, letter),) = redis_client.xrange(DEAD)
    assert letter[b"entry"] == garbage_id.encode()
    assert letter[b"reason"] == b"undecodable entry: no data field"
    assert letter[b"junk"] == b"\xff\x00"
    with pytest.raises(JobFailed, match="no data field"):
        outcome(redis_client, settings, job)


def test_a_garbage_entry_naming_no_job_is_acked_and_dead_lettered(
    redis_client: redis.Redis, settings: Settings
) -> None:
    bystander = submit(settings, "echo", "fine")[0]
    garbage_id = redis_client.xadd(STREAM, {"nonsense": "1"}).decode()

    async def scenario() -> None:
        async with stage_queue(settings, STAGE) as queue:
            deliveries = await read_all(queue, 2)
            (garbage,) = [d for d in deliveries if d.entry_id == garbage_id]
            (good,) = [d for d in deliveries if d.entry_id != garbage_id]
            assert job_id_of(garbage.fields) is None
            await queue.start([(good, bystander)])
            outcomes = [
                Outcome(garbage, "", "dead", "undecodable entry: no job"),
                done(good, "still fine"),
            ]
            assert await queue.finish(outcomes) == [True, True]

    run(scenario())
    assert redis_client.xlen(STREAM) == 0
    assert pending(redis_client, STREAM, STAGE) == []
    ((_, letter),) = redis_client.xrange(DEAD)
    assert letter[b"reason"] == b"undecodable entry: no job"
    assert letter[b"nonsense"] == b"1"
    assert outcome(redis_client, settings, bystander) == "still fine"
