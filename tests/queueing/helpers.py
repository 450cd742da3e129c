"""Shared helpers of the queue-layer tests: registering pipelines, driving a StageQueue by
hand, a fake worker thread, and reading real state back from Redis."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio

from queueing.client import AsyncClient
from queueing.connection import connect_async
from queueing.jobs import JobRecord, JobStatus
from queueing.keys import Keys
from queueing.message import Message, dumps
from queueing.registry import PipelineSpec, StageSpec
from queueing.settings import Settings
from queueing.streams import Delivery, Outcome, StageQueue

T = TypeVar("T")

SERVER_BINARY = os.environ.get("BATCHLINE_TEST_REDIS_SERVER") or None
"""The binary the session's server runs (conftest's choice), for the tests' own servers."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (pytest-asyncio is not installed)."""
    return asyncio.run(coro)


def register(
    redis_client: redis.Redis,
    settings: Settings,
    name: str = "echo",
    stages: tuple[str, ...] = ("run",),
    *,
    max_backlog: int | None = None,
) -> PipelineSpec:
    """Store a pipeline spec in the registry (as a worker's ``publish`` does) and create its
    stages' consumer groups. Stages are chained in order; names are ``<name>.<stage>``."""
    full = [f"{name}.{s}" for s in stages]
    spec = PipelineSpec(
        name=name,
        stages=tuple(
            StageSpec(stage, next=(full[i + 1],) if i + 1 < len(full) else ())
            for i, stage in enumerate(full)
        ),
        max_backlog=max_backlog,
    )
    redis_client.hset(Keys(settings.prefix).registry, name, spec.encode())
    keys = Keys(settings.prefix)
    for stage in full:
        for partition in range(settings.partitions):
            try:
                redis_client.xgroup_create(
                    keys.stream(partition, stage), Keys.group(stage), id="0", mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
    return spec


@asynccontextmanager
async def stage_queue(
    settings: Settings, stage: str, consumer: str = "c1"
) -> AsyncIterator[StageQueue]:
    """A StageQueue on its own async connection (closed afterwards)."""
    client = connect_async(settings)
    try:
        queue = StageQueue(client, settings, stage, consumer)
        await queue.ensure_groups()
        yield queue
    finally:
        await client.aclose()


async def read_all(queue: StageQueue, expected: int, *, block_ms: int = 200) -> list[Delivery]:
    """Read until ``expected`` deliveries came (or a read comes back empty)."""
    got: list[Delivery] = []
    while len(got) < expected:
        batch = await queue.read(expected - len(got), block_ms)
        if not batch:
            break
        got += batch
    return got


def job_of(delivery: Delivery) -> str:
    return Message.decode(delivery.fields).job_id


def done(delivery: Delivery, value: Any) -> Outcome:
    return Outcome(delivery, job_of(delivery), "done", dumps(value))


def pending(redis_client: redis.Redis, stream: str, group: str) -> list[dict[str, Any]]:
    """The group's pending entries (XPENDING's extended form)."""
    return list(redis_client.xpending_range(stream, group, "-", "+", 1000))


def job_hash(redis_client: redis.Redis, settings: Settings, job_id: str) -> dict[str, str]:
    raw = redis_client.hgetall(Keys(settings.prefix).job(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def hash_tag(key: str) -> str | None:
    """The hash tag Redis Cluster would slot ``key`` by (None if it has none)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def has_waitaof(redis_client: redis.Redis) -> bool:
    """Whether the server knows WAITAOF (Redis >= 7.2, Valkey)."""
    try:
        redis_client.execute_command("WAITAOF", 0, 0, 1)  # asks for nothing: answers at once
    except redis.exceptions.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise
    return True


class FakeWorker:
    """A stand-in worker in a thread: reads ``stage`` with StageQueue, starts the jobs and
    finishes each item with ``handler(value)`` (an exception fails that job), as the job's
    result, or handed to the stage ``forward_to``. Items of a batch are finished one by one in
    REVERSE order, so that results arrive out of input order."""

    def __init__(
        self,
        settings: Settings,
        stage: str,
        handler: Callable[[Any], Any],
        *,
        on_read: Callable[[int], None] | None = None,
        forward_to: str | None = None,
        consumer: str = "fake-worker",
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.handler = handler
        self.on_read = on_read
        self.forward_to = forward_to
        self.consumer = consumer
        self.processed = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fake-worker", daemon=True)

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "fake worker did not stop"
        if self._error is not None and exc[0] is None:
            raise AssertionError(f"fake worker crashed: {self._error!r}") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:
            self._error = exc

    async def _loop(self) -> None:
        async with stage_queue(self.settings, self.stage, self.consumer) as queue:
            while not self._stop.is_set():
                deliveries = await queue.read(16, 50)
                if not deliveries:
                    continue
                if self.on_read is not None:
                    self.on_read(await queue.backlog())
                messages = [Message.decode(d.fields) for d in deliveries]
                statuses = await queue.start(
                    [(d, m.job_id) for d, m in zip(deliveries, messages, strict=True)]
                )
                for delivery, message, status in reversed(
                    list(zip(deliveries, messages, statuses, strict=True))
                ):
                    if status != "run":
                        outcome = Outcome(delivery, message.job_id, "skip")
                    else:
                        try:
                            result = self.handler(message.value())
                        except Exception as exc:
                            outcome = Outcome(delivery, message.job_id, "failed", str(exc))
                        else:
                            outcome = self._outcome(delivery, message, result)
                    assert await queue.finish([outcome]) == [True]
                    self.processed += 1

    def _outcome(self, delivery: Delivery, message: Message, result: Any) -> Outcome:
        if self.forward_to is None:
            return Outcome(delivery, message.job_id, "done", dumps(result))
        return Outcome(
            delivery,
            message.job_id,
            "next",
            dumps(result),
            deadline=message.deadline,
            targets=(self.forward_to,),
        )


async def process(
    settings: Settings,
    stage: str,
    count: int = 1,
    *,
    kind: str = "done",
    result: Callable[[Any], Any] = lambda value: value,
    consumer: str = "c1",
) -> list[tuple[str, str]]:
    """Read ``count`` entries of ``stage``, start their jobs and finish each with ``kind``
    (``done``: ``result(value)`` is the job's result; otherwise the value is a reason).
    Returns (job id, what START answered) per entry."""
    async with stage_queue(settings, stage, consumer) as queue:
        deliveries = await read_all(queue, count)
        assert len(deliveries) == count, f"expected {count} entries in {stage}"
        messages = [Message.decode(d.fields) for d in deliveries]
        statuses = await queue.start(
            [(d, m.job_id) for d, m in zip(deliveries, messages, strict=True)]
        )
        outcomes = []
        for delivery, message, status in zip(deliveries, messages, statuses, strict=True):
            if status != "run":
                outcomes.append(Outcome(delivery, message.job_id, "skip"))
            elif kind == "done":
                outcomes.append(
                    Outcome(delivery, message.job_id, "done", dumps(result(message.value())))
                )
            else:
                outcomes.append(Outcome(delivery, message.job_id, kind, f"{kind} on purpose"))
        assert await queue.finish(outcomes) == [True] * count
        return [(m.job_id, s) for m, s in zip(messages, statuses, strict=True)]


def job_keys(redis_client: redis.Redis, settings: Settings) -> list[str]:
    """Every job record in Redis."""
    return sorted(
        k.decode() for k in redis_client.scan_iter(match=f"{settings.prefix}:*:job:*", count=1000)
    )


class Subscription:
    """A (sharded) pub/sub subscription of the test's own, to see what the scripts SPUBLISH."""

    def __init__(self, redis_client: redis.Redis, channel: str) -> None:
        self.pubsub = redis_client.pubsub()
        self.pubsub.ssubscribe(channel)
        confirmation = self.pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "ssubscribe"

    def drain(self, quiet_s: float = 0.2) -> list[bytes]:
        """Every message published so far (waits until none comes for ``quiet_s``)."""
        got = []
        while (message := self.pubsub.get_message(timeout=quiet_s)) is not None:
            if message["type"] == "smessage":
                got.append(message["data"])
        return got

    def close(self) -> None:
        self.pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def submit(settings: Settings, pipeline: str, *values: Any, **options: Any) -> list[str]:
    """Submit with an AsyncClient (quick to close), returning the job ids."""

    async def main() -> list[str]:
        async with AsyncClient(settings) as client:
            jobs = await client.submit_many(pipeline, values, **options)
            return [job.id for job in jobs]

    return run(main())


def cancel(settings: Settings, job_id: str) -> JobStatus:
    async def main() -> JobStatus:
        async with AsyncClient(settings) as client:
            return await client.cancel(job_id)

    return run(main())


def record(redis_client: redis.Redis, settings: Settings, job_id: str) -> JobRecord:
    """The job's record as the clients read it."""
    return JobRecord.from_hash(job_id, redis_client.hgetall(Keys(settings.prefix).job(job_id)))


def outcome(redis_client: redis.Redis, settings: Settings, job_id: str) -> Any:
    """What waiting for the job gives: its result, or the JobError it raises."""
    return record(redis_client, settings, job_id).outcome()
