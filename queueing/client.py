"""The Python enqueue client: ``Client`` and ``AsyncClient``, twins over one core.

They talk to Redis directly (no gateway). ``submit`` runs one script that creates the job
records and appends the entries to the first stage's stream atomically; a finished job wakes
its waiters through pub/sub with its outcome, so nobody polls and, usually, nobody re-reads
the record.

    >>> client = Client()                       # REDIS_URL from the environment
    >>> job = client.submit("echo", {"x": 1})
    >>> job.result(timeout=5)
    {'x': 1}

A numpy array (or a torch tensor) is sent as a raw tensor rather than as JSON lists, and a
tensor the pipeline returns comes back as a numpy array (see :mod:`queueing.message`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from queueing.connection import broker_errors, connect, connect_async, is_unknown_command
from queueing.errors import (
    ConfigError,
    IdempotencyConflict,
    NotDurable,
    QueueFull,
    ResultTimeout,
    UnknownJob,
)
from queueing.jobs import JobRecord, JobStatus, Notice
from queueing.keys import Keys, is_job_id, new_job_id
from queueing.message import Message, decode_result, encode_payload
from queueing.registry import PipelineSpec, lookup, parse_registry
from queueing.scripts import CANCEL, SUBMIT, WATCH
from queueing.settings import Settings
from queueing.waiters import AsyncListener, Listener, Waiter

log = logging.getLogger(__name__)

SUBMIT_CHUNK = 256
"""Inputs ``map`` submits per round trip."""
MAX_SUBMIT_MANY = 10_000
"""Most inputs one ``submit_many`` takes: it is one script, all or none, that holds the server
while it runs."""


@dataclass
class _SubmitBatch:
    """One SUBMIT script call: jobs of one pipeline in one partition."""

    pipeline: str
    partition: int
    keys: list[str]
    args: list[Any]
    indexes: list[int] = field(default_factory=list)
    """Positions of these jobs in the caller's input list."""
    idempotency_keys: list[str | None] = field(default_factory=list)


class _Core:
    """Everything the twins share: argument building, reply parsing, bookkeeping."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.channel = self.keys.notify(secrets.token_hex(8))
        self.specs: dict[str, PipelineSpec] = {}
        self._next_partition = itertools.count()
        self.waitaof = settings.durable_submit

    def partition_for(self, pipeline: str, idempotency_key: str | None) -> int:
        n = self.settings.partitions
        if idempotency_key is not None:
            return zlib.crc32(f"{pipeline}:{idempotency_key}".encode()) % n
        return next(self._next_partition) % n

    def submit_batches(
        self,
        spec: PipelineSpec,
        inputs: Iterable[Any],
        *,
        timeout_s: float | None,
        deadline: float | None,
        idempotency_keys: Iterable[str | None] | None,
        owner: str | None,
    ) -> tuple[list[_SubmitBatch], int]:
        """The script calls that submit ``inputs`` (one per partition touched), and how many
        inputs there are."""
        values = list(inputs)
        if len(values) > MAX_SUBMIT_MANY:
            raise ValueError(
                f"{len(values)} inputs in one submit; at most {MAX_SUBMIT_MANY} (map() takes any number)"
            )
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(values)
        now = time.time()
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
            deadline = now + timeout_s if deadline is None else min(deadline, now + timeout_s)
        limit = spec.max_backlog or self.settings.max_backlog
        per_partition = max(1, -(-limit // self.settings.partitions))
        stage = spec.entry.name
        stamp = repr(now)
        # Inputs without an idempotency key share one partition, so one script takes them
        # all or none; a keyed input lives where its key hashes.
        shared = self.partition_for(spec.name, None)
        batches: dict[int, _SubmitBatch] = {}
        for index, (value, idem) in enumerate(zip(values, keys, strict=True)):
            fmt, data = encode_payload(value)
            partition = shared if idem is None else self.partition_for(spec.name, idem)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = _SubmitBatch(
                    spec.name,
                    partition,
                    keys=[self.keys.stream(partition, stage), self.keys.entries(partition, stage)],
                    args=[
                        spec.name,
                        stage,
                        stamp,
                        per_partition,
                        int(self.settings.result_ttl_s),
                        self.channel,
                        owner or "",
                        self.keys.job_prefix(partition),
                    ],
                )
            job_id = new_job_id(partition)
            fields = Message(job_id, data, now, deadline, fmt).encode()
            batch.args += [
                job_id,
                repr(deadline) if deadline is not None else "",
                self.keys.idempotency(partition, spec.name, idem) if idem is not None else "",
                hashlib.sha256(data).hexdigest() if idem is not None else "",
                len(fields),
                *fields,
            ]
            batch.indexes.append(index)
            batch.idempotency_keys.append(idem)
        return list(batches.values()), len(values)

    def submit_replies(
        self, batches: Sequence[_SubmitBatch], replies: Sequence[Any], count: int
    ) -> list[tuple[str, bool]]:
        """Per input: its job id and whether this call created it; or the error the replies mean."""
        out: list[tuple[str, bool]] = [("", False)] * count
        for batch, reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if len(reply) == 1 and reply[0][0] == b"conflict" and len(reply[0]) == 3:
                idem = batch.idempotency_keys[int(reply[0][2]) - 1]
                assert idem is not None
                raise IdempotencyConflict(idem, reply[0][1].decode())
            if len(reply) == 1 and reply[0][0] == b"full":
                spec = self.specs[batch.pipeline]
                limit = spec.max_backlog or self.settings.max_backlog
                backlog = int(reply[0][1]) * self.settings.partitions
                raise QueueFull(batch.pipeline, backlog, limit)
            for index, (kind, job_id) in zip(batch.indexes, reply, strict=True):
                out[index] = (job_id.decode(), kind == b"queued")
        return out

    def check_job_id(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise UnknownJob(job_id)
        return job_id

    def record(self, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        if not raw:
            raise UnknownJob(job_id)
        return JobRecord.from_hash(job_id, raw)

    def cancel_args(self, job_id: str) -> dict[str, Any]:
        self.check_job_id(job_id)
        return {
            "keys": [self.keys.job(job_id)],
            "args": [job_id, repr(time.time()), int(self.settings.result_ttl_s)],
        }

    def cancel_reply(self, job_id: str, reply: bytes | None) -> JobStatus:
        if reply is None:
            raise UnknownJob(job_id)
        before = JobStatus(reply.decode())
        return JobStatus.CANCELLED if not before.finished else before

    def check_waitaof(self, reply: Sequence[int]) -> None:
        if int(reply[0]) < 1:
            raise NotDurable(
                "the server did not fsync its AOF within 5 s (is appendfsync set to 'no'?): "
                "the job is queued, but not known to be on disk"
            )

    def waitaof_failed(self, exc: redis.exceptions.ResponseError) -> None:
        if is_unknown_command(exc):
            log.warning(
                "this Redis server has no WAITAOF (it came in 7.2); durable submits rely on "
                "its appendfsync setting instead"
            )
            self.waitaof = False
            return
        raise ConfigError(f"BATCHLINE_DURABLE_SUBMIT needs AOF on the server: {exc}") from exc


def _remaining(limit: float | None) -> float | None:
    return None if limit is None else limit - time.monotonic()


class _Progress:
    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total = enabled, total
        self.done, self.started = 0, time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.enabled and (self.done % 100 == 0 or self.done == self.total):
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            sys.stderr.write(f"\r{self.done}{of} done, {rate:,.0f}/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class Job:
    """A submitted job (blocking API)."""

    def __init__(self, client: Client, job_id: str, *, watched: bool = False) -> None:
        self.client = client
        self.id = job_id
        self._watched = watched

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def info(self) -> JobRecord:
        """The job's record; UnknownJob if it does not exist (or expired)."""
        with broker_errors():
            raw = self.client.redis.hgetall(self.client.core.keys.job(self.id))
        return self.client.core.record(self.id, raw)

    def status(self) -> JobStatus:
        return self.info().status

    def cancel(self) -> JobStatus:
        return self.client.cancel(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job's result: JobFailed / JobExpired / JobCancelled if it has none,
        ResultTimeout if ``timeout`` seconds pass first (the job goes on). A tensor result is
        a numpy array."""
        return decode_result(self._result(timeout))

    def _result(self, timeout: float | None) -> Any:
        listener = self.client.listener()
        waiter = listener.register(self.id)
        try:
            limit = None if timeout is None else time.monotonic() + timeout
            if not self._watched:
                self._watch(listener.channel)
            elif waiter.notice is None:
                waiter.event.wait(_remaining(limit))
            while True:
                if waiter.notice is not None:
                    return waiter.notice.outcome()
                waiter.event.clear()  # before the read: a wake-up after it is not lost
                record = self.info()
                if record.status.finished:
                    return record.outcome()
                remaining = _remaining(limit)
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(self.id, timeout or 0.0)
                waiter.event.wait(remaining)
        finally:
            listener.unregister(waiter)

    def _watch(self, channel: str) -> None:
        client = self.client
        with broker_errors():
            reply = client._watch(keys=[client.core.keys.job(self.id)], args=[channel])
        if reply is None:
            raise UnknownJob(self.id)
        self._watched = True


class AsyncJob:
    """A submitted job (asyncio API)."""

    def __init__(self, client: AsyncClient, job_id: str, *, watched: bool = False) -> None:
        self.client = client
        self.id = job_id
        self._watched = watched

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def info(self) -> JobRecord:
        with broker_errors():
            raw = await self.client.redis.hgetall(self.client.core.keys.job(self.id))
        return self.client.core.record(self.id, raw)

    async def status(self) -> JobStatus:
        return (await self.info()).status

    async def cancel(self) -> JobStatus:
        return await self.client.cancel(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job's result; see :meth:`Job.result`."""
        ended = await self._wait(timeout)
        return decode_result(ended.outcome())

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job has finished and return its record (ResultTimeout if not)."""
        ended = await self._wait(timeout)
        return ended if isinstance(ended, JobRecord) else await self.info()

    async def _wait(self, timeout: float | None) -> Notice | JobRecord:
        """Returns once the job has finished: its wake-up notice, or the finished record read
        while waiting."""
        listener = await self.client.listener()
        waiter = listener.register(self.id)
        try:
            limit = None if timeout is None else time.monotonic() + timeout
            if not self._watched:
                await self._watch(listener.channel)
            elif waiter.notice is None:
                await _wait_event(waiter.event, _remaining(limit))
            while True:
                if waiter.notice is not None:
                    return waiter.notice
                waiter.event.clear()  # before the read: a wake-up after it is not lost
                record = await self.info()
                if record.status.finished:
                    return record
                remaining = _remaining(limit)
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(self.id, timeout or 0.0)
                await _wait_event(waiter.event, remaining)
        finally:
            listener.unregister(waiter)

    async def _watch(self, channel: str) -> None:
        client = self.client
        with broker_errors():
            reply = await client._watch(keys=[client.core.keys.job(self.id)], args=[channel])
        if reply is None:
            raise UnknownJob(self.id)
        self._watched = True


async def _wait_event(event: asyncio.Event, timeout: float | None) -> None:
    if timeout is not None and timeout <= 0:
        return
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


class Client:
    """Enqueue jobs and read their results, straight from Redis (blocking API).

    ``Client()`` reads ``REDIS_URL`` and ``BATCHLINE_*`` from the environment; pass a
    :class:`Settings` or ``url=`` to choose. Use it as a context manager, or call ``close()``.
    """

    def __init__(self, settings: Settings | None = None, *, url: str | None = None) -> None:
        settings = settings or Settings.from_env()
        if url is not None:
            settings = settings.replace(redis_url=url)
        self.core = _Core(settings)
        self.redis = connect(settings)
        self._submit = self.redis.register_script(SUBMIT)
        self._cancel = self.redis.register_script(CANCEL)
        self._watch = self.redis.register_script(WATCH)
        self._listener: Listener | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.redis.close()

    def listener(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self.redis, self.core.channel)
        with broker_errors():
            self._listener.start()
        return self._listener

    def pipelines(self, *, refresh: bool = True) -> dict[str, PipelineSpec]:
        """The registered pipelines by name."""
        if refresh or not self.core.specs:
            with broker_errors():
                self.core.specs = parse_registry(self.redis.hgetall(self.core.keys.registry))
        return self.core.specs

    def pipeline(self, name: str) -> PipelineSpec:
        if name not in self.core.specs:
            self.pipelines()
        return lookup(self.core.specs, name)

    def submit(
        self,
        pipeline: str,
        input: Any,
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> Job:
        """Enqueue one input. ``timeout_s`` (from now) or ``deadline`` (unix seconds) bound
        when a worker may still start it; ``idempotency_key`` makes retries return the same
        job (the same key with another input raises IdempotencyConflict)."""
        return self.submit_many(
            pipeline,
            [input],
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=[idempotency_key],
            owner=owner,
        )[0]

    def submit_many(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Enqueue several inputs in one round trip, each its own job; all or none (QueueFull)
        within a partition (inputs without an idempotency key share one)."""
        self.listener()  # subscribed before anything can finish
        batches, count = self.core.submit_batches(
            self.pipeline(pipeline),
            inputs,
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=idempotency_keys,
            owner=owner,
        )
        with broker_errors():
            if len(batches) == 1:  # the usual case: no pipeline, no SCRIPT EXISTS before it
                replies = [self._submit(keys=batches[0].keys, args=batches[0].args)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for batch in batches:
                    self._submit(keys=batch.keys, args=batch.args, client=pipe)
                replies = pipe.execute(raise_on_error=False)
            self._wait_for_aof()
        ids = self.core.submit_replies(batches, replies, count)
        jobs = [Job(self, job_id, watched=created) for job_id, created in ids]
        return jobs

    def _wait_for_aof(self) -> None:
        if self.core.waitaof:
            try:
                reply = self.redis.execute_command("WAITAOF", 1, 0, 5000)
            except redis.exceptions.ResponseError as exc:
                self.core.waitaof_failed(exc)
            else:
                self.core.check_waitaof(reply)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (UnknownJob if there is none)."""
        job = Job(self, self.core.check_job_id(job_id))
        job.info()
        return job

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one never reaches a model. Returns the status after."""
        with broker_errors():
            reply = self._cancel(**self.core.cancel_args(job_id))
        return self.core.cancel_reply(job_id, reply)

    def map(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Submit every input, keeping at most ``max_in_flight`` unfinished, and yield the
        results in input order. A job that failed raises its JobError when its turn comes."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        listener = self.listener()
        source = iter(inputs)
        bar = _Progress(progress, len(inputs) if isinstance(inputs, Sequence) else None)
        in_flight: list[tuple[Job, Waiter]] = []
        refill_at = max(1, min(SUBMIT_CHUNK, max_in_flight) // 2)
        exhausted = False
        try:
            while True:
                room = max_in_flight - len(in_flight)
                if not exhausted and room >= refill_at:
                    chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                    exhausted = not chunk
                    if chunk:
                        jobs = self.submit_many(pipeline, chunk, timeout_s=timeout_s)
                        in_flight += [(job, listener.register(job.id)) for job in jobs]
                        continue
                if not in_flight:
                    break
                job, waiter = in_flight.pop(0)
                try:
                    if waiter.notice is None:
                        waiter.event.wait(self.core.settings.visibility_timeout_s)
                    yield decode_result(waiter.notice.outcome()) if waiter.notice else job.result()
                finally:
                    listener.unregister(waiter)
                bar.step()
        finally:
            for _, waiter in in_flight:
                listener.unregister(waiter)
            bar.close()


class AsyncClient:
    """Enqueue jobs and read their results, straight from Redis (asyncio API).

    The twin of :class:`Client`; use ``async with AsyncClient() as client``.
    """

    def __init__(self, settings: Settings | None = None, *, url: str | None = None) -> None:
        settings = settings or Settings.from_env()
        if url is not None:
            settings = settings.replace(redis_url=url)
        self.core = _Core(settings)
        self.redis = connect_async(settings)
        self._submit = self.redis.register_script(SUBMIT)
        self._cancel = self.redis.register_script(CANCEL)
        self._watch = self.redis.register_script(WATCH)
        self._listener: AsyncListener | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self.redis.aclose()

    async def listener(self) -> AsyncListener:
        if self._listener is None:
            self._listener = AsyncListener(self.redis, self.core.channel)
        with broker_errors():
            await self._listener.start()
        return self._listener

    async def pipelines(self, *, refresh: bool = True) -> dict[str, PipelineSpec]:
        if refresh or not self.core.specs:
            with broker_errors():
                self.core.specs = parse_registry(await self.redis.hgetall(self.core.keys.registry))
        return self.core.specs

    async def pipeline(self, name: str) -> PipelineSpec:
        if name not in self.core.specs:
            await self.pipelines()
        return lookup(self.core.specs, name)

    async def submit(
        self,
        pipeline: str,
        input: Any,
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> AsyncJob:
        """Enqueue one input; see :meth:`Client.submit`."""
        jobs = await self.submit_many(
            pipeline,
            [input],
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=[idempotency_key],
            owner=owner,
        )
        return jobs[0]

    async def submit_many(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
        owner: str | None = None,
    ) -> list[AsyncJob]:
        """Enqueue several inputs in one round trip, each its own job; all or none."""
        await self.listener()
        batches, count = self.core.submit_batches(
            await self.pipeline(pipeline),
            inputs,
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=idempotency_keys,
            owner=owner,
        )
        with broker_errors():
            if len(batches) == 1:  # the usual case: no pipeline, no SCRIPT EXISTS before it
                replies = [await self._submit(keys=batches[0].keys, args=batches[0].args)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for batch in batches:
                    await self._submit(keys=batch.keys, args=batch.args, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
            await self._wait_for_aof()
        ids = self.core.submit_replies(batches, replies, count)
        jobs = [AsyncJob(self, job_id, watched=created) for job_id, created in ids]
        return jobs

    async def _wait_for_aof(self) -> None:
        if self.core.waitaof:
            try:
                reply = await self.redis.execute_command("WAITAOF", 1, 0, 5000)
            except redis.exceptions.ResponseError as exc:
                self.core.waitaof_failed(exc)
            else:
                self.core.check_waitaof(reply)

    async def job(self, job_id: str) -> AsyncJob:
        """A handle on an existing job (UnknownJob if there is none)."""
        job = AsyncJob(self, self.core.check_job_id(job_id))
        await job.info()
        return job

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one never reaches a model. Returns the status after."""
        with broker_errors():
            reply = await self._cancel(**self.core.cancel_args(job_id))
        return self.core.cancel_reply(job_id, reply)

    async def map(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """Submit every input, at most ``max_in_flight`` unfinished; yield results in order."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        source = iter(inputs)
        pending: list[asyncio.Task[Any]] = []
        try:
            while True:
                room = max_in_flight - len(pending)
                chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                if chunk:
                    jobs = await self.submit_many(pipeline, chunk, timeout_s=timeout_s)
                    pending += [asyncio.create_task(job.result()) for job in jobs]
                    continue
                if not pending:
                    return
                yield await pending.pop(0)
        finally:
            for task in pending:
                task.cancel()
