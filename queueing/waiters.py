"""Waking waiters: one pub/sub connection per process, no polling, no connection per waiter.

A finished job's script PUBLISHes a :class:`~queueing.jobs.Snapshot` (the whole job as it
ended) on the channel of every process waiting for it: the submitter's channel is in the
record from the start; another process adds its own with the WATCH script. A listener hands the
notice to the local waiters of that job.

The record stays the source of truth, and no wait depends on a notice arriving: when the
pub/sub connection drops (and once it is back) every waiter is woken without a notice, and the
clients re-read the records of the jobs they wait for at a bounded interval anyway
(:data:`RECHECK_S`). A lost notice costs time and a read, never a result.
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

from queueing.connection import REDIS_DOWN
from queueing.jobs import Snapshot

log = logging.getLogger(__name__)

RECHECK_S = 2.0
"""Longest a waiter waits for a notice before it re-reads the record."""
_RETRY_S = 0.5
RECENT_BYTES = 16 << 20
"""Most bytes of recent notices a listener keeps (for waiters registered just after the end)."""
RECENT_COUNT = 65_536
"""Most recent notices a listener keeps."""
RECENT_VALUE_LIMIT = 4096
"""A recent notice with a larger value is kept without it: its waiter re-reads the record."""


class _Waiting:
    """One wait for one job: ``notice`` is set when the job's wake-up carried its outcome.
    Its event is made on the first wait only: ``Client.map`` registers thousands of jobs and
    waits on few of them."""

    __slots__ = ("event", "job_id", "notice", "woken")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.event: Any = None
        self.notice: Snapshot | None = None
        self.woken = False
        """Woken since the last wait (with a notice, or to re-read the record)."""

    def wake(self, notice: Snapshot | None) -> None:
        if notice is not None:
            self.notice = notice
        self.woken = True
        if self.event is not None:
            self.event.set()


class Waiter(_Waiting):
    """A wait in a thread (woken by the listener's thread, under the listener's lock)."""

    __slots__ = ("_lock",)

    def __init__(self, job_id: str, lock: threading.Lock) -> None:
        super().__init__(job_id)
        self._lock = lock

    def wait(self, timeout: float | None) -> None:
        """Until woken (a notice, or a reason to re-read) or ``timeout`` seconds; then armed
        again for the next wake-up."""
        with self._lock:
            if not self.woken and self.event is None:
                self.event = threading.Event()
            event = None if self.woken else self.event
        if event is not None and (timeout is None or timeout > 0):
            event.wait(timeout)
        with self._lock:
            self.woken = False
            if self.event is not None:
                self.event.clear()


class AsyncWaiter(_Waiting):
    """A wait in a task."""

    __slots__ = ()

    async def wait(self, timeout: float | None) -> None:
        """See :meth:`Waiter.wait`."""
        if not self.woken:
            if self.event is None:
                self.event = asyncio.Event()
            if timeout is None:
                await self.event.wait()
            elif timeout > 0:
                # A bare timer that wakes the wait (lighter than asyncio.timeout, which a
                # gateway would pay on every request).
                timer = asyncio.get_running_loop().call_later(timeout, self.event.set)
                try:
                    await self.event.wait()
                finally:
                    timer.cancel()
            self.event.clear()
        self.woken = False


class _Hub:
    """The bookkeeping both listeners share: waiters by job id, and the latest notices (bounded
    in number and bytes), so that a waiter registered just after its job's wake-up (a job can
    finish before ``submit`` returns) is woken at once."""

    def __init__(self) -> None:
        self.waiters: defaultdict[str, set[_Waiting]] = defaultdict(set)
        self.recent: OrderedDict[str, Snapshot | None] = OrderedDict()
        self.recent_bytes = 0

    def add(self, waiter: _Waiting) -> None:
        self.waiters[waiter.job_id].add(waiter)
        if waiter.job_id in self.recent:
            waiter.wake(self.recent[waiter.job_id])

    def remove(self, waiter: _Waiting) -> None:
        group = self.waiters.get(waiter.job_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self.waiters[waiter.job_id]

    def deliver(self, data: bytes) -> None:
        try:
            notices = Snapshot.decode_all(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring a malformed wake-up message: %r", data[:80])
            return
        for notice in notices:
            self._remember(notice)
            for waiter in list(self.waiters.get(notice.job_id, ())):
                waiter.wake(notice)

    def _remember(self, notice: Snapshot) -> None:
        keep = notice if len(notice.value) <= RECENT_VALUE_LIMIT else None
        size = _size(keep)
        old = self.recent.pop(notice.job_id, None)
        self.recent_bytes += size - _size(old)
        self.recent[notice.job_id] = keep
        while len(self.recent) > RECENT_COUNT or self.recent_bytes > RECENT_BYTES:
            _, dropped = self.recent.popitem(last=False)
            self.recent_bytes -= _size(dropped)

    def wake_all(self) -> None:
        for group in list(self.waiters.values()):
            for waiter in list(group):
                waiter.wake(None)


def _size(notice: Snapshot | None) -> int:
    return 0 if notice is None else len(notice.value) + len(notice.timings) + 200


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

    @property
    def ready(self) -> bool:
        """Whether it has subscribed (it resubscribes by itself after a disconnection)."""
        return self._ready.is_set()

    def register(self, job_id: str) -> Waiter:
        waiter = Waiter(job_id, self._lock)
        with self._lock:
            self._hub.add(waiter)
        return waiter

    def unregister(self, waiter: _Waiting) -> None:
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
            except REDIS_DOWN as exc:
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

    @property
    def ready(self) -> bool:
        """Whether it has subscribed (it resubscribes by itself after a disconnection)."""
        return self._ready is not None and self._ready.is_set()

    def register(self, job_id: str) -> AsyncWaiter:
        waiter = AsyncWaiter(job_id)
        self._hub.add(waiter)
        return waiter

    def unregister(self, waiter: _Waiting) -> None:
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
            except REDIS_DOWN as exc:
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self._hub.wake_all()
                await asyncio.sleep(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
