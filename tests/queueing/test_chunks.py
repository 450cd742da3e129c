"""EMIT, driven by hand (StageQueue + ChunkWriter): a step repeated after a lost reply writes
nothing twice, an end is written once with the job's result, a claimed entry is fenced, a
re-run starts with one restart entry, a cancelled job's stream ends as cancelled. Readers:
a cursor that is no event id is refused with our error, and a client's followers are bounded
(past the bound nothing is submitted) and read on their own pool."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis

from queueing.chunks import ChunkWriter, StreamEvent
from queueing.client import AsyncClient, Client
from queueing.deadletter import DeadLetters, Requeue
from queueing.errors import InvalidEventId, JobCancelled, TooManyStreams
from queueing.keys import Keys
from queueing.scripts import Emitted, Kind
from queueing.settings import Settings
from queueing.streams import Delivery, Outcome

from .helpers import job_keys, job_of, read_all, record, register, run, stage_queue, submit

KEYS = Keys()
STAGE = "echo.run"


def entries(r: redis.Redis, job_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in r.xrange(KEYS.chunks(job_id))]


def step(writer: ChunkWriter, delivery: Delivery, **fields: object) -> Emitted:
    blank = writer.item(delivery.partition, delivery.entry_id, job_of(delivery))
    return dataclasses.replace(blank, **fields)  # type: ignore[arg-type]


def test_a_repeated_step_writes_nothing_twice_and_the_end_once(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    [job_id] = submit(settings, "echo", {"n": 1})

    async def scenario() -> list[list[str]]:
        async with stage_queue(settings, STAGE) as queue:
            [delivery] = await read_all(queue, 1)
            await queue.start([(delivery, job_id)])
            writer = ChunkWriter(queue.redis, settings, STAGE, queue.consumer)
            first = step(writer, delivery, first=True, seq=0, data=b'"a"')
            second = step(writer, delivery, seq=1, data=b'"b"')
            end = step(writer, delivery, end="done", value=b'["a","b"]', timing=b"")
            answers = []
            for emitted in (first, second, end):  # each reply "lost" once: tried twice
                now = time.time()
                for _ in range(2):
                    answers.append(await writer.emit([(0, "normal")], [emitted], now=now))
            return answers

    answers = run(scenario())
    assert answers[:5] == [["ok"]] * 5
    assert answers[5] == ["ended"]  # its entry was acked by the first: a no-op, its own end
    kinds = [(f[b"k"], f.get(b"seq")) for f in entries(redis_client, job_id)]
    assert kinds == [(b"chunk", b"0"), (b"chunk", b"1"), (b"end", None)]
    assert record(redis_client, settings, job_id).result == ["a", "b"]
    assert int(redis_client.hget(KEYS.stats(0), f"{STAGE}:done") or 0) == 1
    assert redis_client.xlen(KEYS.stream(0, STAGE)) == 0
    assert redis_client.ttl(KEYS.chunks(job_id)) > 0


def test_a_claimed_entry_is_fenced_and_its_rerun_restarts_the_stream_once(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    [job_id] = submit(settings, "echo", {"n": 1})

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with (
            stage_queue(settings, STAGE, "stalled") as stalled,
            stage_queue(settings, STAGE, "rescuer") as rescuer,
        ):
            [delivery] = await read_all(stalled, 1)
            await stalled.start([(delivery, job_id)])
            old = ChunkWriter(stalled.redis, settings, STAGE, "stalled")
            await old.emit([(0, "normal")], [step(old, delivery, first=True, seq=0, data=b'"x"')])
            await rescuer.redis.xclaim(
                KEYS.stream(0, STAGE), STAGE, "rescuer", 0, [delivery.entry_id]
            )
            fenced = await old.emit([(0, "normal")], [step(old, delivery, seq=1, data=b'"y"')])
            await rescuer.start([(delivery, job_id)])  # attempt 2
            new = ChunkWriter(rescuer.redis, settings, STAGE, "rescuer")
            rerun = step(new, delivery, first=True, seq=0, data=b'"x"')
            again = await new.emit([(0, "normal")], [rerun])
            repeated = await new.emit([(0, "normal")], [rerun])
            return fenced, again, repeated

    fenced, again, repeated = run(scenario())
    assert fenced == ["fenced"]
    assert again == repeated == ["ok"]
    fields = entries(redis_client, job_id)
    assert [(f[b"k"], f[b"a"]) for f in fields] == [
        (b"chunk", b"1"),
        (b"restart", b"2"),
        (b"chunk", b"2"),
    ]
    # Readers see the restart as an event, between the attempts.
    with Client(settings) as client:
        events: list[StreamEvent] = []
        for event in client.events(job_id):
            events.append(event)
            if len(events) == 3:
                break
    assert [(e.kind, e.attempt) for e in events] == [("chunk", 1), ("restart", 2), ("chunk", 2)]


def test_a_job_cancelled_mid_stream_is_stopped_acked_and_its_stream_ended(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    [job_id] = submit(settings, "echo", {"n": 1})

    async def scenario() -> list[str]:
        async with stage_queue(settings, STAGE) as queue:
            [delivery] = await read_all(queue, 1)
            await queue.start([(delivery, job_id)])
            writer = ChunkWriter(queue.redis, settings, STAGE, queue.consumer)
            await writer.emit(
                [(0, "normal")], [step(writer, delivery, first=True, seq=0, data=b"1")]
            )
            async with AsyncClient(settings) as client:
                await client.cancel(job_id)
            return await writer.emit([(0, "normal")], [step(writer, delivery, seq=1, data=b"2")])

    assert run(scenario()) == ["cancelled"]
    fields = entries(redis_client, job_id)
    assert [f[b"k"] for f in fields] == [b"chunk", b"end"]
    assert fields[-1][b"status"] == b"cancelled"
    assert redis_client.xpending(KEYS.stream(0, STAGE), STAGE)["pending"] == 0
    job_ttl = redis_client.ttl(KEYS.job(job_id))
    assert job_ttl > 0
    assert abs(redis_client.ttl(KEYS.chunks(job_id)) - job_ttl) <= 1
    with Client(settings) as client:
        read: list[StreamEvent] = []
        try:
            for event in client.events(job_id):
                read.append(event)
        except JobCancelled:
            pass
        else:
            raise AssertionError("the reader did not raise JobCancelled")
    assert [e.value for e in read] == [1]


def test_a_cursor_that_is_no_event_id_raises_invalid_event_id(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    [job_id] = submit(settings, "echo", {"n": 1})
    bad = ["junk", "", "1-", "-1", "1-2-3", "18446744073709551616", "0-18446744073709551616"]
    bad += ["99999999999999999999-0", " 1", "1\n"]
    with Client(settings) as client:
        for after in bad:
            with pytest.raises(InvalidEventId, match="invalid event id"):
                next(client.events(job_id, after=after))
        assert client.following == 0  # (each refused reader gave its place back)
        # The largest ids Redis takes are taken: nothing follows them but the job's end.
        client.cancel(job_id)
        for after in ("18446744073709551615", "18446744073709551615-18446744073709551615"):
            read = list(client.events(job_id, after=after, ends=True))
            assert [(e.kind, e.status) for e in read] == [("end", "cancelled")]


def test_followers_are_bounded_and_past_the_bound_nothing_is_submitted(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    with Client(settings.replace(max_streams=2)) as client:
        [job_id] = submit(settings, "echo", {"n": 1})
        held = client.follower()
        reader = client.events(job_id)
        client.cancel(job_id)  # (so the reader ends: its stream has no end entry)
        with pytest.raises(JobCancelled):
            next(reader)
        assert client.following == 1  # the reader gave its place back as it ended
        other = client.follower()
        assert client.following == 2
        with pytest.raises(TooManyStreams, match="BATCHLINE_MAX_STREAMS"):
            next(client.stream("echo", {"n": 2}))
        with pytest.raises(TooManyStreams):
            next(client.events(job_id))
        assert len(job_keys(redis_client, settings)) == 1  # nothing was submitted
        held.release()
        other.release()
        held.release()  # (again: nothing)
        assert client.following == 0
        # The blocking reads went through the followers' own pool, not the main one.
        assert client._follow_redis is not None
        assert client._follow_redis is not client.redis


@pytest.mark.parametrize("expired", [False, True], ids=["kept", "expired"])
def test_a_requeued_run_restarts_the_stream_though_its_attempt_number_repeats(
    redis_client: redis.Redis, settings: Settings, expired: bool
) -> None:
    """Requeued from the dead letters, a job counts its attempts from 1 again: its new run's
    first write is a restart all the same (another input entry), also when the old run's
    stream has expired meanwhile; repeated after a lost reply, it writes nothing twice."""
    register(redis_client, settings)
    [job_id] = submit(settings, "echo", {"n": 1})

    async def scenario() -> list[list[str]]:
        async with stage_queue(settings, STAGE) as queue:
            [delivery] = await read_all(queue, 1)
            await queue.start([(delivery, job_id)])  # attempt 1
            writer = ChunkWriter(queue.redis, settings, STAGE, queue.consumer)
            for seq, data in enumerate((b'"a"', b'"b"')):
                await writer.emit(
                    [(0, "normal")], [step(writer, delivery, first=seq == 0, seq=seq, data=data)]
                )
            await queue.finish([Outcome(delivery, job_id, Kind.DEAD, "poisoned")])
            if expired:
                await queue.redis.delete(KEYS.chunks(job_id))
            letters = DeadLetters(queue.redis, settings)
            letter = await letters.find(job_id)
            assert letter is not None
            assert (await letters.requeue(letter)).outcome is Requeue.REQUEUED
            [again] = await read_all(queue, 1)
            await queue.start([(again, job_id)])  # attempt 1 again
            rerun = step(writer, again, first=True, seq=0, data=b'"c"')
            return [await writer.emit([(0, "normal")], [rerun]) for _ in range(2)]

    assert run(scenario()) == [["ok"], ["ok"]]
    fields = entries(redis_client, job_id)
    old = [] if expired else [(b"chunk", b"0", b"a"), (b"chunk", b"1", b"b")]
    assert [(f[b"k"], f.get(b"seq"), f.get(b"data", b"")[1:-1]) for f in fields] == [
        *old,
        (b"restart", None, b""),
        (b"chunk", b"0", b"c"),
    ]
    assert {f[b"a"] for f in fields} == {b"1"}
    assert len({f[b"e"] for f in fields}) == (1 if expired else 2)
