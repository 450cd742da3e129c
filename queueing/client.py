"""The Python enqueue client: ``Client`` and ``AsyncClient``, twins over one core.

They talk to Redis directly (no gateway): ``submit`` runs one script that creates the job
record and appends the entry to the first stage's stream atomically; results come back through
the job record, with a pub/sub wake-up so nobody polls.

    >>> client = Client()                       # REDIS_URL from the environment
    >>> job = client.submit("echo", {"x": 1})
    >>> job.result(timeout=5)
    {'x': 1}
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
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from queueing.connection import broker_errors, connect, connect_async, is_unknown_command
from queueing.errors import (
    ConfigError,
    IdempotencyConflict,
    QueueFull,
    ResultTimeout,
    UnknownJob,
)
from queueing.jobs import JobRecord, JobStatus
from queueing.keys import Keys, is_job_id, new_job_id
from queueing.message import Message, dumps
from queueing.registry import PipelineSpec, lookup, parse_registry
from queueing.scripts import CANCEL, SUBMIT, WATCH
from queueing.settings import Settings
from queueing.waiters import AsyncListener, Listener

log = logging.getLogger(__name__)

SUBMIT_CHUNK = 256
"""Submissions sent per round trip by ``map``."""


@dataclass(frozen=True)
class _SubmitCall:
    job_id: str
    pipeline: str
    idempotency_key: str | None
    keys: list[str]
    args: list[Any]


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

    def submit_call(
        self,
        spec: PipelineSpec,
        value: Any,
        *,
        timeout_s: float | None,
        deadline: float | None,
        idempotency_key: str | None,
        owner: str | None,
    ) -> _SubmitCall:
        now = time.time()
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
            deadline = now + timeout_s if deadline is None else min(deadline, now + timeout_s)
        data = dumps(value)
        partition = self.partition_for(spec.name, idempotency_key)
        job_id = new_job_id(partition)
        stage = spec.entry.name
        message = Message(job_id, data, now, deadline)
        limit = spec.max_backlog or self.settings.max_backlog
        per_partition = max(1, -(-limit // self.settings.partitions))
        use_idem = idempotency_key is not None
        idem_key = (
            self.keys.idempotency(partition, spec.name, idempotency_key)
            if idempotency_key is not None
            else self.keys.job(job_id)  # unused; same slot
        )
        keys = [
            self.keys.stream(partition, stage),
            self.keys.entries(partition, stage),
            self.keys.job(job_id),
            idem_key,
        ]
        args: list[Any] = [
            job_id,
            spec.name,
            stage,
            repr(now),
            repr(deadline) if deadline is not None else "",
            per_partition,
            "1" if use_idem else "0",
            hashlib.sha256(data).hexdigest() if use_idem else "",
            int(self.settings.result_ttl_s),
            self.channel,
            owner or "",
            *message.encode(),
        ]
        return _SubmitCall(job_id, spec.name, idempotency_key, keys, args)

    def submit_reply(self, call: _SubmitCall, reply: list[bytes]) -> tuple[str, bool]:
        """The job id (and whether this call created it), or the error the reply means."""
        kind, value = reply[0].decode(), reply[1].decode()
        if kind == "queued":
            return value, True
        if kind == "existing":
            return value, False
        if kind == "conflict":
            assert call.idempotency_key is not None
            raise IdempotencyConflict(call.idempotency_key, value)
        spec = self.specs[call.pipeline]
        limit = spec.max_backlog or self.settings.max_backlog
        raise QueueFull(call.pipeline, int(value) * self.settings.partitions, limit)

    def check_job_id(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise UnknownJob(job_id)
        return job_id

    def record(self, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        if not raw:
            raise UnknownJob(job_id)
        return JobRecord.from_hash(job_id, raw)

    def cancel_reply(self, job_id: str, reply: bytes | None) -> JobStatus:
        if reply is None:
            raise UnknownJob(job_id)
        before = JobStatus(reply.decode())
        return JobStatus.CANCELLED if not before.finished else before

    def waitaof_failed(self, exc: redis.exceptions.ResponseError) -> None:
        if is_unknown_command(exc):
            log.warning(
                "this Redis server has no WAITAOF (it came in 7.2); durable submits rely on "
                "its appendfsync setting instead"
            )
            self.waitaof = False
            return
        raise ConfigError(f"BATCHLINE_DURABLE_SUBMIT needs AOF on the server: {exc}") from exc


def _progress(done: int, total: int | None, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    of = f"/{total}" if total is not None else ""
    sys.stderr.write(f"\r{done}{of} done, {rate:,.0f}/s")
    sys.stderr.flush()


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
        ResultTimeout if ``timeout`` seconds pass first (the job goes on)."""
        client = self.client
        listener = client.listener()
        event = listener.register(self.id)
        try:
            if not self._watched:
                with broker_errors():
                    reply = client._watch(
                        keys=[client.core.keys.job(self.id)], args=[listener.channel]
                    )
                if reply is None:
                    raise UnknownJob(self.id)
                self._watched = True
            limit = None if timeout is None else time.monotonic() + timeout
            while True:
                record = self.info()
                if record.status.finished:
                    return record.outcome()
                remaining = None if limit is None else limit - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(self.id, timeout or 0.0)
                event.wait(remaining)
                event.clear()
        finally:
            listener.unregister(self.id, event)


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
        record = await self.wait(timeout)
        return record.outcome()

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job has finished and return its record (ResultTimeout if not)."""
        client = self.client
        listener = await client.listener()
        event = listener.register(self.id)
        try:
            if not self._watched:
                with broker_errors():
                    reply = await client._watch(
                        keys=[client.core.keys.job(self.id)], args=[listener.channel]
                    )
                if reply is None:
                    raise UnknownJob(self.id)
                self._watched = True
            limit = None if timeout is None else time.monotonic() + timeout
            while True:
                record = await self.info()
                if record.status.finished:
                    return record
                remaining = None if limit is None else limit - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(self.id, timeout or 0.0)
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    pass
                event.clear()
        finally:
            listener.unregister(self.id, event)


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
        when a worker may still start it; ``idempotency_key`` makes retries return the same job."""
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
        """Enqueue several inputs in one round trip; each is its own job."""
        self.listener()  # subscribed before anything can finish
        spec = self.pipeline(pipeline)
        inputs = list(inputs)
        idem = list(idempotency_keys) if idempotency_keys is not None else [None] * len(inputs)
        calls = [
            self.core.submit_call(
                spec,
                value,
                timeout_s=timeout_s,
                deadline=deadline,
                idempotency_key=key,
                owner=owner,
            )
            for value, key in zip(inputs, idem, strict=True)
        ]
        with broker_errors():
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                self._submit(keys=call.keys, args=call.args, client=pipe)
            replies = pipe.execute(raise_on_error=False)
            self._wait_for_aof()
        jobs = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            job_id, created = self.core.submit_reply(call, reply)
            jobs.append(Job(self, job_id, watched=created))
        return jobs

    def _wait_for_aof(self) -> None:
        if self.core.waitaof:
            try:
                self.redis.execute_command("WAITAOF", 1, 0, 5000)
            except redis.exceptions.ResponseError as exc:
                self.core.waitaof_failed(exc)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (UnknownJob if there is none)."""
        job = Job(self, self.core.check_job_id(job_id))
        job.info()
        return job

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one never reaches a model. Returns the status after."""
        self.core.check_job_id(job_id)
        with broker_errors():
            reply = self._cancel(
                keys=[self.core.keys.job(job_id)],
                args=[job_id, repr(time.time()), int(self.core.settings.result_ttl_s)],
            )
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
        """Submit every input, keeping at most ``max_in_flight`` queued, and yield the results
        in input order. A job that fails raises its JobError when its turn comes."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        listener = self.listener()
        source = iter(inputs)
        total = len(inputs) if hasattr(inputs, "__len__") else None  # type: ignore[arg-type]
        in_flight: list[tuple[Job, Any]] = []  # (job, event), in input order
        records: dict[str, JobRecord] = {}
        started, done = time.perf_counter(), 0
        exhausted = False
        try:
            while True:
                room = max_in_flight - len(in_flight)
                if not exhausted and room >= min(SUBMIT_CHUNK, max_in_flight) // 2:
                    chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                    exhausted = len(chunk) < min(room, SUBMIT_CHUNK)
                    if chunk:
                        jobs = self.submit_many(pipeline, chunk, timeout_s=timeout_s)
                        in_flight += [(job, listener.register(job.id)) for job in jobs]
                        continue
                if not in_flight:
                    break
                head, event = in_flight[0]
                if head.id not in records:
                    event.wait(self.core.settings.visibility_timeout_s)
                    self._collect(in_flight, records)
                    if head.id not in records:
                        continue
                record = records.pop(head.id)
                listener.unregister(head.id, event)
                in_flight.pop(0)
                done += 1
                if progress:
                    _progress(done, total, started)
                yield record.outcome()
        finally:
            for job, event in in_flight:
                listener.unregister(job.id, event)
            if progress:
                sys.stderr.write("\n")

    def _collect(self, in_flight: list[tuple[Job, Any]], records: dict[str, JobRecord]) -> None:
        """Fetch, in one round trip, the records of every in-flight job that was woken."""
        woken = [job for job, event in in_flight if event.is_set() and job.id not in records]
        if not woken:
            woken = [in_flight[0][0]]  # nothing woke it in time: look anyway
        with broker_errors():
            pipe = self.redis.pipeline(transaction=False)
            for job in woken:
                pipe.hgetall(self.core.keys.job(job.id))
            raws = pipe.execute()
        for job, raw in zip(woken, raws, strict=True):
            record = self.core.record(job.id, raw)
            if record.status.finished:
                records[job.id] = record


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
        """Enqueue several inputs in one round trip; each is its own job."""
        await self.listener()
        spec = await self.pipeline(pipeline)
        inputs = list(inputs)
        idem = list(idempotency_keys) if idempotency_keys is not None else [None] * len(inputs)
        calls = [
            self.core.submit_call(
                spec,
                value,
                timeout_s=timeout_s,
                deadline=deadline,
                idempotency_key=key,
                owner=owner,
            )
            for value, key in zip(inputs, idem, strict=True)
        ]
        with broker_errors():
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                await self._submit(keys=call.keys, args=call.args, client=pipe)
            replies = await pipe.execute(raise_on_error=False)
            await self._wait_for_aof()
        jobs = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            job_id, created = self.core.submit_reply(call, reply)
            jobs.append(AsyncJob(self, job_id, watched=created))
        return jobs

    async def _wait_for_aof(self) -> None:
        if self.core.waitaof:
            try:
                await self.redis.execute_command("WAITAOF", 1, 0, 5000)
            except redis.exceptions.ResponseError as exc:
                self.core.waitaof_failed(exc)

    async def job(self, job_id: str) -> AsyncJob:
        job = AsyncJob(self, self.core.check_job_id(job_id))
        await job.info()
        return job

    async def cancel(self, job_id: str) -> JobStatus:
        self.core.check_job_id(job_id)
        with broker_errors():
            reply = await self._cancel(
                keys=[self.core.keys.job(job_id)],
                args=[job_id, repr(time.time()), int(self.core.settings.result_ttl_s)],
            )
        return self.core.cancel_reply(job_id, reply)

    async def map(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """Submit every input, at most ``max_in_flight`` at once; yield results in order."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        source = iter(inputs)
        pending: list[asyncio.Task[Any]] = []

        async def refill() -> bool:
            chunk = list(itertools.islice(source, min(max_in_flight - len(pending), SUBMIT_CHUNK)))
            if chunk:
                jobs = await self.submit_many(pipeline, chunk, timeout_s=timeout_s)
                pending.extend(asyncio.create_task(job.result()) for job in jobs)
            return bool(chunk)

        try:
            while await refill() or pending:
                while pending and (pending[0].done() or len(pending) >= max_in_flight):
                    yield await pending.pop(0)
                if pending and not pending[0].done():
                    await asyncio.wait([pending[0]])
        finally:
            for task in pending:
                task.cancel()
