"""AsyncClient, the asyncio twin of Client: the same guarantees, checked the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from queueing.client import AsyncClient, AsyncJob, Client
from queueing.errors import (
    IdempotencyConflict,
    JobCancelled,
    JobFailed,
    QueueFull,
    ResultTimeout,
    UnknownJob,
    UnknownPipeline,
)
from queueing.jobs import JobStatus
from queueing.keys import Keys, new_job_id
from queueing.message import Message
from queueing.settings import Settings
from queueing.waiters import RECHECK_S

from .helpers import FakeWorker, job_hash, job_keys, pending, process, register, run

STREAM = Keys().stream(0, "echo.run")


def with_client(settings: Settings, body: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with AsyncClient(settings) as client:
            return await body(client)

    return run(main())


@pytest.fixture(autouse=True)
def _echo(settings: Settings, redis_client: redis.Redis) -> None:
    register(redis_client, settings)


def test_submit_writes_a_queued_record_and_one_stream_entry(
    settings: Settings, redis_client: redis.Redis
) -> None:
    async def body(client: AsyncClient) -> str:
        job = await client.submit("echo", {"x": 1}, owner="bob")
        assert await job.status() is JobStatus.QUEUED
        info = await job.info()
        assert (info.pipeline, info.stage, info.owner) == ("echo", "echo.run", "bob")
        assert (await client.job(job.id)).id == job.id
        return job.id

    job_id = with_client(settings, body)
    assert job_hash(redis_client, settings, job_id)["status"] == "queued"
    ((entry_id, fields),) = redis_client.xrange(STREAM)
    assert Message.decode(fields).job_id == job_id
    assert Message.decode(fields).value() == {"x": 1}
    assert job_hash(redis_client, settings, job_id)["entry"] == entry_id.decode()


def test_submit_many(settings: Settings, redis_client: redis.Redis) -> None:
    async def body(client: AsyncClient) -> list[str]:
        return [job.id for job in await client.submit_many("echo", range(4))]

    ids = with_client(settings, body)
    assert [Message.decode(f).job_id for _, f in redis_client.xrange(STREAM)] == ids


def test_unknown_pipeline_and_unknown_jobs(settings: Settings, redis_client: redis.Redis) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(UnknownPipeline):
            await client.submit("nope", 1)
        for bad in ["nope", "0-zz", new_job_id(0)]:
            with pytest.raises(UnknownJob):
                await client.job(bad)
            with pytest.raises(UnknownJob):
                await client.cancel(bad)

    with_client(settings, body)
    assert redis_client.xlen(STREAM) == 0


def test_idempotency(settings: Settings, redis_client: redis.Redis) -> None:
    async def body(client: AsyncClient) -> None:
        first = await client.submit("echo", [1], idempotency_key="k")
        again = await client.submit("echo", [1], idempotency_key="k")
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict) as info:
            await client.submit("echo", [2], idempotency_key="k")
        assert info.value.job_id == first.id
        await process(settings, "echo.run", 1, result=len)
        assert await again.result(timeout=10) == 1

    with_client(settings, body)
    assert len(job_keys(redis_client, settings)) == 1


def test_queue_full(settings: Settings, redis_client: redis.Redis) -> None:
    register(redis_client, settings, "small", max_backlog=1)

    async def body(client: AsyncClient) -> None:
        await client.submit("small", 1)
        with pytest.raises(QueueFull) as info:
            await client.submit("small", 2)
        assert (info.value.backlog, info.value.limit) == (1, 1)

    with_client(settings, body)
    assert redis_client.xlen(Keys().stream(0, "small.run")) == 1
    assert len(job_keys(redis_client, settings)) == 1


def test_cancel_a_queued_job(settings: Settings, redis_client: redis.Redis) -> None:
    async def body(client: AsyncClient) -> str:
        job = await client.submit("echo", 1)
        assert await job.cancel() is JobStatus.CANCELLED
        with pytest.raises(JobCancelled):
            await job.result(timeout=1)
        assert await process(settings, "echo.run", 1) == [(job.id, "cancelled")]
        assert (await job.wait(timeout=1)).status is JobStatus.CANCELLED
        return job.id

    job_id = with_client(settings, body)
    assert job_hash(redis_client, settings, job_id)["status"] == "cancelled"
    assert redis_client.xlen(STREAM) == 0
    assert pending(redis_client, STREAM, "echo.run") == []


def test_result_timeout_and_then_the_result(settings: Settings) -> None:
    async def body(client: AsyncClient) -> None:
        job = await client.submit("echo", 4)
        with pytest.raises(ResultTimeout):
            await job.result(timeout=0.2)
        assert await job.status() is JobStatus.QUEUED
        await process(settings, "echo.run", 1, result=lambda v: v + 1)
        assert await job.result(timeout=10) == 5
        record = await job.wait(timeout=1)
        assert record.status is JobStatus.DONE
        assert record.result == 5

    with_client(settings, body)


def test_result_wakes_up_while_waiting(settings: Settings) -> None:
    async def body(client: AsyncClient) -> None:
        job = await client.submit("echo", 2)
        waiting = asyncio.create_task(job.result(timeout=30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await process(settings, "echo.run", 1, result=lambda v: v * 3)
        assert await asyncio.wait_for(waiting, 10) == 6

    with_client(settings, body)


def test_result_of_a_job_submitted_by_another_client(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The WATCH path, async side: a job submitted by a blocking Client is awaited here."""
    with Client(settings) as submitter:
        job_id = submitter.submit("echo", "x").id

        async def body(client: AsyncClient) -> None:
            handle = await client.job(job_id)
            waiting = asyncio.create_task(handle.result(timeout=30))
            for _ in range(1000):
                if client.core.channel(0) in job_hash(redis_client, settings, job_id)["reply"]:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the async client never watched the job")
            assert not waiting.done()
            await process(settings, "echo.run", 1, result=lambda v: v * 2)
            assert await asyncio.wait_for(waiting, 10) == "xx"

        with_client(settings, body)


def test_a_job_ending_between_the_record_read_and_the_wait_still_wakes_its_waiter(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async twin of the same test in test_client.py: the job ends, and its wake-up is
    taken in by the listener task, right after AsyncJob WATCHed it (the job still queued). The
    waiter must not then sleep through it (its re-check would find it RECHECK_S later; the
    bound is under that)."""
    watch = AsyncJob._watch

    async def watch_then_the_job_ends(self: AsyncJob) -> JobStatus:
        status = await watch(self)
        await process(settings, "echo.run", 1)
        await asyncio.sleep(0.3)  # let the listener task take the wake-up in
        return status

    async def body(client: AsyncClient) -> None:
        with Client(settings) as submitter:
            job_id = submitter.submit("echo", 7).id
        handle = await client.job(job_id)
        monkeypatch.setattr(AsyncJob, "_watch", watch_then_the_job_ends)
        waiting = asyncio.create_task(handle.result(timeout=20))
        done, _ = await asyncio.wait([waiting], timeout=0.3 + RECHECK_S - 0.1)
        assert done, "the waiter slept through its job's wake-up"
        assert waiting.result() == 7

    with_client(settings, body)


def test_failed_job_raises(settings: Settings) -> None:
    async def body(client: AsyncClient) -> None:
        job = await client.submit("echo", 1)
        await process(settings, "echo.run", 1, kind="failed")
        with pytest.raises(JobFailed, match="failed on purpose") as info:
            await job.result(timeout=5)
        assert info.value.stage == "echo.run"

    with_client(settings, body)


def test_map_yields_results_in_input_order(settings: Settings) -> None:
    backlogs: list[int] = []

    async def body(client: AsyncClient) -> list[Any]:
        return [value async for value in client.map("echo", range(30), max_in_flight=6)]

    with FakeWorker(settings, "echo.run", lambda v: -v, on_read=backlogs.append) as worker:
        results = with_client(settings, body)
    assert results == [-i for i in range(30)]
    assert worker.processed == 30
    assert backlogs
    assert max(backlogs) <= 6


def test_map_raises_a_failed_jobs_error_in_its_turn(settings: Settings) -> None:
    def handler(value: int) -> int:
        if value == 2:
            raise RuntimeError("no twos")
        return value

    async def body(client: AsyncClient) -> list[int]:
        got: list[int] = []

        async def consume() -> None:
            async for value in client.map("echo", range(5)):
                got.append(value)

        with pytest.raises(JobFailed, match="no twos"):
            await consume()
        return got

    with FakeWorker(settings, "echo.run", handler):
        assert with_client(settings, body) == [0, 1]
