"""Waking waiters: one pub/sub connection per process, no polling, no connection per waiter.

A finished job's script PUBLISHes a :class:`~queueing.jobs.Notice` (its outcome) on the channel
of every process waiting for it: the submitter's channel is in the record from the start;
another process adds its own with the WATCH script. A listener hands the notice to the local
waiters of that job. The record stays the source of truth: when the pub/sub connection drops,
every waiter is woken without a notice and re-reads the record, so a missed message costs a
read, never a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, defaultdict
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from queueing.jobs import Notice

log = logging.getLogger(__name__)

_RETRY_S = 0.5
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_RECENT_VALUE_LIMIT = 4096


class Waiter:
    """One wait for one job: ``notice`` is set when the job's wake-up carried its outcome."""

    __slots__ = ("event", "job_id", "notice")

    def __init__(self, job_id: str, event: Any) -> None:
        self.job_id = job_id
        self.event = event
        self.notice: Notice | None = None

    def wake(self, notice: Notice | None) -> None:
        if notice is not None:
            self.notice = notice
        self.event.set()


class _Hub:
    """The bookkeeping both listeners share: waiters by job id, and the latest notices, so
    that a waiter registered just after its job's wake-up (a job can finish before ``submit``
    returns) is woken at once."""

    def __init__(self, recent: int = 65_536) -> None:
        self.waiters: defaultdict[str, set[Waiter]] = defaultdict(set)
        self.recent: OrderedDict[str, Notice | None] = OrderedDict()
        self.size = recent

    def add(self, waiter: Waiter) -> None:
        self.waiters[waiter.job_id].add(waiter)
        if waiter.job_id in self.recent:
            waiter.wake(self.recent[waiter.job_id])

    def remove(self, waiter: Waiter) -> None:
        group = self.waiters.get(waiter.job_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self.waiters[waiter.job_id]

    def deliver(self, data: bytes) -> None:
        try:
            notices = Notice.decode_all(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring a malformed wake-up message: %r", data[:80])
            return
        for notice in notices:
            keep = notice if len(notice.value) <= _RECENT_VALUE_LIMIT else None
            self.recent[notice.job_id] = keep
            if len(self.recent) > self.size:
                self.recent.popitem(last=False)
            for waiter in list(self.waiters.get(notice.job_id, ())):
                waiter.wake(notice)

    def wake_all(self) -> None:
        for group in list(self.waiters.values()):
            for waiter in list(group):
                waiter.wake(None)


class Listener:
    """Blocking twin: a daemon thread reading one channel."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self.channel = channel
        self._hub = _Hub()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the subscription is in place."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="batchline-listener", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(timeout):
            raise redis.exceptions.ConnectionError(
                f"could not subscribe to {self.channel}: {self._error or 'timed out'}"
            )

    def register(self, job_id: str) -> Waiter:
        waiter = Waiter(job_id, threading.Event())
        with self._lock:
            self._hub.add(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            self._hub.remove(waiter)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                self._ready.set()
                with self._lock:
                    self._hub.wake_all()  # anything that ended while we were not subscribed
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message["type"] == "message":
                        with self._lock:
                            self._hub.deliver(message["data"])
            except _REDIS_DOWN as exc:
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self._error = exc
                with self._lock:
                    self._hub.wake_all()
                self._stop.wait(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


class AsyncListener:
    """Asyncio twin: one task reading one channel."""

    def __init__(self, client: redis.asyncio.Redis, channel: str) -> None:
        self._client = client
        self.channel = channel
        self._hub = _Hub()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the subscription is in place."""
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="batchline-listener")
        assert self._ready is not None
        if self._ready.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise redis.exceptions.ConnectionError(
                f"could not subscribe to {self.channel} within {timeout}s"
            ) from None

    def register(self, job_id: str) -> Waiter:
        waiter = Waiter(job_id, asyncio.Event())
        self._hub.add(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        self._hub.remove(waiter)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._ready is not None
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                self._ready.set()
                self._hub.wake_all()
                while True:
                    # A bounded wait on the socket (no command is sent), under its timeout.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._hub.deliver(message["data"])
            except _REDIS_DOWN as exc:
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self._hub.wake_all()
                await asyncio.sleep(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
