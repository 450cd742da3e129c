"""Streamed outputs through real worker processes: chunks in order per item, the result as the
list of chunks, sync and async readers, cancellation mid-stream, a worker killed mid-stream
(restart event, exactly one end), chunks that expire with the job, continuous batching."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest
import redis

from pipelines.dsl import Pipeline
from queueing.chunks import StreamEvent
from queueing.client import AsyncClient, Client
from queueing.errors import JobCancelled, JobFailed
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.queueing.helpers import job_of, read_all, record, run, stage_queue, submit
from tests.queueing.helpers import register as register_spec
from tests.support import KEYS, Workers, register, stat, wait_finished, wait_until
from tests.workers.streaming_pipelines import STEPS, t_agen, t_cont, t_gen, t_static
from tests.workers.test_recovery import _supervise
from workers.batching import batch
from workers.loop import _Batch
from workers.stage import Stage
from workers.streaming import Slot, StreamingLoop

PIPELINES = ("tests.workers.streaming_pipelines",)


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    return settings.replace(pipelines=PIPELINES)


def chunks(n: int, x: int) -> list[dict[str, int]]:
    return [{"x": x, "i": i} for i in range(n)]


def steps(r: redis.Redis, stage: str) -> list[list[int]]:
    """The items of every step the stage ran, in order."""
    return [[int(x) for x in s.split(b",")] for s in r.lrange(STEPS + stage, 0, -1) if s]


def steps_of(r: redis.Redis, stage: str, x: int) -> int:
    return sum(step.count(x) for step in steps(r, stage))


def test_a_generator_streams_each_items_chunks_in_order_and_its_result_is_the_list(
    stream_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    register(stream_settings, t_gen)
    lengths = [3, 6, 1, 4]
    with Client(stream_settings) as client:
        jobs = client.submit_many("t_gen", [{"x": x, "n": n} for x, n in enumerate(lengths)])
        workers.start("t_gen.model", burst=True, settings=stream_settings)
        records = wait_finished(jobs, 30)
        assert [r.result for r in records] == [chunks(n, x) for x, n in enumerate(lengths)]
        for x, (job, n) in enumerate(zip(jobs, lengths, strict=True)):
            events = list(client.events(job.id))
            assert [e.kind for e in events] == ["chunk"] * n
            assert [e.seq for e in events] == list(range(n))
            assert [e.value for e in events] == chunks(n, x)
            assert all(e.job_id == job.id for e in events)
            # Resuming after the second chunk yields the rest.
            if n > 2:
                assert [e.value for e in client.events(job.id, after=events[1].id)] == chunks(n, x)[
                    2:
                ]
    # One batch of four, stepped as long as its longest item.
    assert steps(redis_client, "t_gen.model")[0] == [0, 1, 2, 3]
    assert len(steps(redis_client, "t_gen.model")) == max(lengths)
    assert stat(redis_client, "t_gen.model", "done") == len(lengths)


def test_chunks_expire_with_the_job(
    stream_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    register(stream_settings, t_gen)
    with Client(stream_settings) as client:
        job = client.submit("t_gen", {"x": 1, "n": 2}, result_ttl_s=120)
        workers.start("t_gen.model", burst=True, settings=stream_settings)
        assert job.result(timeout=30) == chunks(2, 1)
    key = KEYS.chunks(job.id)
    assert redis_client.xlen(key) == 3  # two chunks and the end
    job_ttl = redis_client.ttl(KEYS.job(job.id))
    assert 0 < job_ttl <= 120
    assert abs(redis_client.ttl(key) - job_ttl) <= 1


def test_the_sync_client_follows_a_stream_as_it_is_written(
    stream_settings: Settings, workers: Workers
) -> None:
    register(stream_settings, t_gen)
    workers.start("t_gen.model", settings=stream_settings)
    with Client(stream_settings) as client:
        events = list(client.stream("t_gen", {"x": 7, "n": 5, "sleep": 0.02}))
    assert [e.value for e in events] == chunks(5, 7)


def test_the_async_client_follows_an_async_generators_stream(
    stream_settings: Settings, workers: Workers
) -> None:
    register(stream_settings, t_agen)
    workers.start("t_agen.model", settings=stream_settings)

    async def go() -> list[list[Any]]:
        async with AsyncClient(stream_settings) as client:

            async def one(x: int, n: int) -> list[Any]:
                item = {"x": x, "n": n, "sleep": 0.02}
                return [e.value async for e in client.stream("t_agen", item)]

            return await asyncio.gather(one(1, 4), one(2, 2), one(3, 6))

    assert asyncio.run(go()) == [chunks(4, 1), chunks(2, 2), chunks(6, 3)]


def test_an_item_that_fails_mid_stream_fails_alone(
    stream_settings: Settings, workers: Workers
) -> None:
    register(stream_settings, t_gen)
    with Client(stream_settings) as client:
        bad = client.submit("t_gen", {"x": 1, "n": 5, "fail_at": 2})
        good = client.submit("t_gen", {"x": 2, "n": 5})
        workers.start("t_gen.model", burst=True, settings=stream_settings)
        assert good.result(timeout=30) == chunks(5, 2)
        with pytest.raises(JobFailed, match="failed at step 2"):
            bad.result(timeout=30)
        read: list[StreamEvent] = []
        errors: list[Exception] = []
        _follow(client, bad.id, read, errors)
        assert [e.value for e in read] == chunks(2, 1)
        assert [type(e) for e in errors] == [JobFailed]
        assert "failed at step 2" in str(errors[0])


def _follow(client: Client, job_id: str, into: list[StreamEvent], errors: list[Exception]) -> None:
    try:
        for event in client.events(job_id):
            into.append(event)
    except Exception as exc:
        errors.append(exc)


@pytest.mark.parametrize("pipeline", [t_cont, t_gen], ids=["step", "generator"])
def test_cancelling_mid_stream_stops_that_items_work(
    pipeline: Pipeline, stream_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    """The cancelled item runs no more steps (a step handler never gets it again; a generator
    is told, as the value of its ``yield``); the other item of its batch streams to its end."""
    register(stream_settings, pipeline)
    name = pipeline.name
    stage = f"{name}.model"
    with Client(stream_settings) as client:
        doomed = client.submit(name, {"x": 1, "n": 200, "sleep": 0.02})
        other = client.submit(name, {"x": 2, "n": 40, "sleep": 0.02})
        workers.start(stage, settings=stream_settings)
        read: list[StreamEvent] = []
        errors: list[Exception] = []
        reader = threading.Thread(target=_follow, args=(client, doomed.id, read, errors))
        reader.start()
        wait_until(lambda: len(read) >= 3, 30, "the doomed item never streamed")
        assert client.cancel(doomed.id) is JobStatus.CANCELLED
        reader.join(30)
        assert [type(e) for e in errors] == [JobCancelled]
        assert other.result(timeout=30) == chunks(40, 2)
        ran = steps_of(redis_client, stage, 1)
        # No more steps for it afterwards (the other item has ended too: nothing runs now).
        wait_until(lambda: redis_client.xlen(KEYS.chunks(other.id)) == 41, 10, "no end")
        assert steps_of(redis_client, stage, 1) == ran
        # It stopped while the other went on (its few steps ran before the cancel).
        assert ran < 40 <= steps_of(redis_client, stage, 2)
        end = redis_client.xrevrange(KEYS.chunks(doomed.id), count=1)[0][1]
        assert (end[b"k"], end[b"status"]) == (b"end", b"cancelled")
        assert redis_client.ttl(KEYS.chunks(doomed.id)) > 0


def test_a_worker_killed_mid_stream_leaves_the_job_to_another_which_restarts_the_stream(
    stream_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    register(stream_settings, t_gen)
    n = 12
    with Client(stream_settings) as client:
        job = client.submit("t_gen", {"x": 5, "n": n, "sleep": 0.1})
        first = workers.start("t_gen.model", settings=stream_settings, name="first")
        read: list[StreamEvent] = []
        errors: list[Exception] = []
        reader = threading.Thread(target=_follow, args=(client, job.id, read, errors))
        reader.start()
        wait_until(lambda: len(read) >= 3, 30, "the first worker never streamed")
        first.kill()
        assert first.wait(10) == -signal.SIGKILL
        partial = len(read)
        assert partial < n, "the stream ended before the kill"
        workers.start("t_gen.model", settings=stream_settings, name="second")
        reader.join(60)
        assert not errors
        kinds = [e.kind for e in read]
        assert kinds == ["chunk"] * partial + ["restart"] + ["chunk"] * n
        assert read[partial].attempt == 2
        assert [e.value for e in read[partial + 1 :]] == chunks(n, 5)
        assert job.result(timeout=5) == chunks(n, 5)
        # Resuming from the start shows the same: a reader knows to drop the first chunks.
        assert [e.kind for e in client.events(job.id)] == kinds
    assert stat(redis_client, "t_gen.model", "done") == 1, "the job ended more than once"
    ends = [f for _, f in redis_client.xrange(KEYS.chunks(job.id)) if f[b"k"] == b"end"]
    assert len(ends) == 1


def test_continuous_batching_runs_short_items_beside_a_long_one(
    stream_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    """Two places: a long item and four short ones. Refilled, the short ones take the second
    place one after the other while the long one streams; in static batches of two, the
    three short ones that are not batched with the long one wait for it to end."""
    items = [{"x": 0, "n": 16}] + [{"x": x, "n": 2} for x in range(1, 5)]
    for pipeline in (t_cont, t_static):
        register(stream_settings, pipeline)
        with Client(stream_settings) as client:
            jobs = client.submit_many(pipeline.name, items)
            workers.start(f"{pipeline.name}.model", burst=True, settings=stream_settings)
            records = wait_finished(jobs, 30)
        assert [r.result for r in records] == [chunks(i["n"], i["x"]) for i in items]
    refilled = steps(redis_client, "t_cont.model")
    static = steps(redis_client, "t_static.model")
    assert max(len(step) for step in refilled) == 2
    last_long = max(i for i, step in enumerate(refilled) if 0 in step)
    last_short = max(i for i, step in enumerate(refilled) if set(step) - {0})
    assert last_short < last_long, f"short items waited for the long one: {refilled}"
    static_long = max(i for i, step in enumerate(static) if 0 in step)
    static_short = max(i for i, step in enumerate(static) if set(step) - {0})
    assert static_short > static_long, f"static batches refilled: {static}"
    assert len(static) > len(refilled)


def test_a_streaming_stage_must_be_last() -> None:
    @batch
    def streams(items: list[Any]) -> Any:
        yield items

    def after(items: list[Any]) -> list[Any]:
        return items

    with pytest.raises(ValueError, match="streams its outputs, so it must be the pipeline's last"):
        Pipeline("bad", streams, after).compile()
    with pytest.raises(TypeError, match="continuous=True takes a step handler"):
        batch(continuous=True)(streams.fn)
    with pytest.raises(TypeError, match="streams its outputs: serve it in a pipeline"):
        streams({"x": 1})


def test_the_generate_example_streams_deterministic_tokens(
    settings: Settings, workers: Workers
) -> None:
    from pipelines.examples.generate import VOCAB, generate

    register(settings, generate)
    workers.start("generate.generate", settings=settings)
    prompts = [{"prompt": "once upon a time", "max_tokens": 5}, {"prompt": "hi"}]
    with Client(settings) as client:
        first = [[e.value for e in client.stream("generate", p)] for p in prompts]
        again = client.submit("generate", prompts[0]).result(timeout=30)
        bad = client.submit("generate", {"prompt": "x", "max_tokens": 0})
        with pytest.raises(JobFailed, match="max_tokens must be an integer"):
            bad.result(timeout=30)
    assert len(first[0]) == 5
    assert len(first[1]) in (8, 64)
    assert all(token in VOCAB for tokens in first for token in tokens)
    assert again == first[0]


def test_a_streaming_last_stage_streams_what_the_stage_before_it_handed_on(
    stream_settings: Settings, workers: Workers
) -> None:
    from tests.workers.streaming_pipelines import t_pre

    register(stream_settings, t_pre)
    workers.start("t_pre", settings=stream_settings)
    with Client(stream_settings) as client:
        assert [e.value for e in client.stream("t_pre", {"x": 4, "n": 2})] == chunks(4, 4)


@pytest.mark.parametrize("pipeline", ["t_gen", "t_cont"])
def test_streams_of_every_priority_lane_are_written_and_ended(
    pipeline: str, stream_settings: Settings, workers: Workers
) -> None:
    """A step is fenced and acked on the stream its entry was read from: its lane's."""
    register(stream_settings, t_gen if pipeline == "t_gen" else t_cont)
    with Client(stream_settings) as client:
        jobs = {
            lane: client.submit(pipeline, {"x": x, "n": 3}, priority=lane)
            for x, lane in enumerate(("high", "normal", "low"))
        }
        workers.start(f"{pipeline}.model", burst=True, settings=stream_settings)
        for x, job in enumerate(jobs.values()):
            assert job.result(timeout=30) == chunks(3, x)
            assert [e.value for e in client.events(job.id)] == chunks(3, x)


def test_continuous_suspects_wait_for_the_running_items_and_run_alone(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A batch of suspects (recovered entries, one of which may crash the worker) taken while
    an item streams does not join it: the running item ends first, then the suspect runs
    alone, and nothing else is taken until it has ended. (In process, the loop fed by hand:
    the ordering, not the crash.)"""
    seen: list[list[int]] = []

    @batch(max_batch_size=4, continuous=True)
    def step(slots: list[Slot]) -> list[Any]:
        seen.append([s.input["x"] for s in slots])
        return [{"i": s.steps} if s.steps < s.input["n"] else StopIteration for s in slots]

    register_spec(redis_client, settings, "susp", ("model",))
    good_id, poison_id = submit(settings, "susp", {"x": 0, "n": 4}, {"x": 1, "n": 1})

    async def scenario() -> None:
        async with stage_queue(settings, "susp.model") as queue:
            by_job = {job_of(d): d for d in await read_all(queue, 2)}
            stage = Stage("susp.model", step)
            loop = StreamingLoop(stage, stage.load("cpu"), queue, settings)

            async def feed() -> None:
                await loop._inbox.put(_Batch([by_job[good_id]]))
                await loop._inbox.put(_Batch([by_job[poison_id]], suspect=True))
                await loop._suspects_ran.wait()
                await loop._inbox.put(None)

            await asyncio.gather(loop._consume(), feed())

    run(scenario())
    assert all(not {0, 1} <= set(s) for s in seen), f"a suspect joined a running item: {seen}"
    assert seen.index([1]) > max(i for i, s in enumerate(seen) if 0 in s), seen
    assert record(redis_client, settings, good_id).result == [{"i": i} for i in range(4)]
    assert record(redis_client, settings, poison_id).result == [{"i": 0}]


def test_a_poison_suspect_crashes_the_worker_without_the_items_streaming_beside_it(
    stream_settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    """A dead consumer left a poison entry started once of two attempts: claimed while a long
    item streams, it waits for that item to end and then runs alone, so its crash costs the
    long item nothing (no second attempt, no restart of its stream)."""
    settings = stream_settings.replace(max_deliveries=2)
    register(settings, t_cont)
    stage = "t_cont.model"
    poison = client.submit("t_cont", {"x": 9, "n": 1, "kill": True})

    async def die_holding_it() -> None:
        async with stage_queue(settings, stage, "dead") as queue:
            [delivery] = await read_all(queue, 1)
            await queue.start([(delivery, poison.id)])  # attempt 1 of 2, never finished

    run(die_holding_it())
    good = client.submit("t_cont", {"x": 0, "n": 30, "sleep": 0.1})
    records, deaths = _supervise(workers, stage, [good, poison], settings, timeout=45, max_starts=4)
    assert records[0].result == chunks(30, 0)
    assert deaths == [-signal.SIGKILL], "the poison entry should kill one worker, once"
    assert [e.kind for e in client.events(good.id)].count("restart") == 0
    assert redis_client.hget(KEYS.job(good.id), f"a:{stage}") == b"1"
    with pytest.raises(JobFailed, match="dead-lettered"):
        poison.result(timeout=1)
