"""Waking waiters: one pub/sub connection per process (per master, in a cluster), no polling, no
connection per waiter.

A finished job's script PUBLISHes a :class:`~queueing.jobs.Snapshot` (the whole job as it
ended) on the channel of every process waiting for it: the submitter's channel is in the
record from the start; another process adds its own with the WATCH script. A listener hands the
notice to the local waiters of that job.

Channels are sharded (SSUBSCRIBE/SPUBLISH, Redis >= 7.0), one per partition and listener, in
the partition's slot: in a cluster a notice travels only within the shard whose master ran the
script (classic PUBLISH is broadcast to every node, so every node would carry every notice), and
a listener subscribes on each master that owns some of its channels. A slot that moves ends
its subscription (the server says so), and the listener subscribes again where it now lives.

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
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions

from queueing.cluster import (
    AsyncRedis,
    SyncRedis,
    master_name,
    node_connection,
    node_connection_async,
)
from queueing.connection import REDIS_DOWN
from queueing.jobs import Snapshot
from queueing.tasks import cancel_and_wait

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
            if not notice.status.finished:
                # A job requeued from its dead letters is live again: forget its failure, so
                # that a wait that starts now waits for its new end.
                forgotten = self.recent.pop(notice.job_id, None)
                self.recent_bytes -= _size(forgotten)
                continue
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


SUBSCRIBE_TIMEOUT_S = 5.0
"""Longest a (re)subscription waits for the server to confirm it."""


def hand_on_push(message: Any) -> Any:
    """The pub/sub connections' handler of RESP3 push messages: hands each one on as it is.
    redis-py's own (8.1) builds a debug line of the whole message, ``str()`` of up to a
    hundred KB of notices, for every message at every log level (redis-py issue 4230)."""
    return message


async def hand_on_push_async(message: Any) -> Any:
    """Asyncio twin of :func:`hand_on_push`."""
    return message


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_master(
    client: redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster,
    channels: Sequence[str],
) -> list[list[str]]:
    """The channels, grouped by the master that owns each one's slot."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for channel in channels:
        by_node[master_name(client, channel)].append(channel)
    return list(by_node.values())


def _groups(client: SyncRedis, channels: Sequence[str]) -> list[tuple[redis.Redis, list[str]]]:
    """Where to subscribe: the client itself for a standalone server; in a cluster, a plain
    client to each master that owns some of the channels' slots (with its channels)."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return [(client, list(channels))]
    return [(node_connection(client, names[0]), names) for names in _by_master(client, channels)]


async def _groups_async(
    client: AsyncRedis, channels: Sequence[str]
) -> list[tuple[redis.asyncio.Redis, list[str]]]:
    """Asyncio twin of :func:`_groups` (it learns the cluster's slots first)."""
    if not isinstance(client, redis.asyncio.cluster.RedisCluster):
        return [(client, list(channels))]
    await client.initialize()
    return [
        (node_connection_async(client, names[0]), names) for names in _by_master(client, channels)
    ]


class _Moved(Exception):
    """The server dropped a subscription (its slot moved to another master)."""


_LOST: tuple[type[Exception], ...] = (*REDIS_DOWN, _Moved, redis.exceptions.RedisError)
"""What ends a subscription: an outage, the server dropping it, or an error answer (redis-py
resubscribing by itself after a reconnection, with channels of several slots in one SSUBSCRIBE,
which a cluster refuses): each is followed by a fresh subscription, channel by channel."""


MISSING_RETRY_S = 2.0
"""How soon a listener that could not subscribe on some master (it is down, or failing over)
tries again; meanwhile the waits on that master's jobs re-read their records."""


def _missing(exc: BaseException, groups: int, missing: list[BaseException]) -> None:
    """A master that could not be subscribed on: with others that could, the listener goes on
    without it for a while (its waiters re-read their records); alone, it is an outage."""
    if groups == 1 or len(missing) + 1 == groups:
        raise exc
    if not missing:
        log.warning("result listener: a master is unreachable (%s); subscribing without it", exc)
    missing.append(exc)


class Listener:
    """Blocking twin: daemon threads, one per master that holds some of its channels (one for
    a standalone server)."""

    def __init__(self, client: SyncRedis, channels: Sequence[str]) -> None:
        self._client = client
        self.channels = list(channels)
        self._hub = _Hub()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the subscriptions are in place."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="batchline-listener", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(timeout):
            raise redis.exceptions.ConnectionError(
                f"could not subscribe to {self.channels[0]}...: {self._error or 'timed out'}"
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
            pubsubs: list[Any] = []
            owned: list[redis.Redis] = []
            broken = threading.Event()
            readers: list[threading.Thread] = []
            try:
                groups = _groups(self._client, self.channels)
                missing: list[BaseException] = []
                for connection, channels in groups:
                    if connection is not self._client:
                        owned.append(connection)
                    pubsub = connection.pubsub(push_handler_func=hand_on_push)
                    try:
                        for channel in channels:  # (one by one: a cluster refuses CROSSSLOT)
                            pubsub.ssubscribe(channel)
                        self._confirm(pubsub, len(channels))
                    except _LOST as exc:
                        _missing(exc, len(groups), missing)
                        pubsub.close()
                        continue
                    pubsubs.append(pubsub)
                self._ready.set()
                with self._lock:
                    self._hub.wake_all()  # anything that ended while we were not subscribed
                for pubsub in pubsubs:
                    reader = threading.Thread(target=self._read, args=(pubsub, broken), daemon=True)
                    reader.start()
                    readers.append(reader)
                again = time.monotonic() + MISSING_RETRY_S if missing else float("inf")
                while not self._stop.is_set() and not broken.is_set():
                    self._stop.wait(0.5)
                    if time.monotonic() > again:
                        broken.set()  # (subscribe again, on the masters that were missing too)
            except _LOST as exc:
                self._error = exc
                self._lost(exc)
            finally:
                broken.set()
                for reader in readers:
                    reader.join(timeout=2)
                for pubsub in pubsubs:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                for connection in owned:
                    with contextlib.suppress(Exception):
                        connection.close()
            if broken.is_set() and not self._stop.is_set():
                with self._lock:
                    self._hub.wake_all()
                self._stop.wait(_RETRY_S)

    def _lost(self, exc: BaseException) -> None:
        log.warning("result listener lost its subscription (%s); resubscribing", exc)
        with self._lock:
            self._hub.wake_all()
        if isinstance(self._client, redis.cluster.RedisCluster):
            with contextlib.suppress(Exception):
                self._client.nodes_manager.initialize()
        self._stop.wait(_RETRY_S)

    def _confirm(self, pubsub: Any, count: int) -> None:
        limit = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        while count > 0:
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise redis.exceptions.TimeoutError("no confirmation of a subscription")
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] == "ssubscribe":
                count -= 1
            elif message["type"] == "smessage":
                with self._lock:
                    self._hub.deliver(message["data"])

    def _read(self, pubsub: Any, broken: threading.Event) -> None:
        try:
            while not broken.is_set() and not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is None:
                    continue
                if message["type"] == "smessage":
                    with self._lock:
                        self._hub.deliver(message["data"])
                elif message["type"] == "sunsubscribe":
                    raise _Moved(f"unsubscribed from {_text(message['channel'])}")
        except _LOST as exc:
            if not broken.is_set():
                self._error = exc
                log.warning("result listener lost its subscription (%s); resubscribing", exc)
                if isinstance(self._client, redis.cluster.RedisCluster):
                    with contextlib.suppress(Exception):
                        self._client.nodes_manager.initialize()
        finally:
            broken.set()


class AsyncListener:
    """Asyncio twin: a task per master that holds some of its channels (one for a standalone
    server)."""

    def __init__(self, client: AsyncRedis, channels: Sequence[str]) -> None:
        self._client = client
        self.channels = list(channels)
        self._hub = _Hub()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the subscriptions are in place."""
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
                f"could not subscribe to {self.channels[0]}... within {timeout}s"
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
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        assert self._ready is not None
        while True:
            pubsubs: list[Any] = []
            owned: list[redis.asyncio.Redis] = []
            readers: list[asyncio.Task[None]] = []
            try:
                groups = await _groups_async(self._client, self.channels)
                missing: list[BaseException] = []
                for connection, channels in groups:
                    if connection is not self._client:
                        owned.append(connection)
                    pubsub = connection.pubsub(push_handler_func=hand_on_push_async)
                    try:
                        for channel in channels:  # (one by one: a cluster refuses CROSSSLOT)
                            await pubsub.ssubscribe(channel)
                        await self._confirm(pubsub, len(channels))
                    except _LOST as exc:
                        _missing(exc, len(groups), missing)
                        await pubsub.aclose()
                        continue
                    pubsubs.append(pubsub)
                self._ready.set()
                self._hub.wake_all()  # anything that ended while we were not subscribed
                readers = [asyncio.create_task(self._read(pubsub)) for pubsub in pubsubs]
                done, _ = await asyncio.wait(
                    readers,
                    timeout=MISSING_RETRY_S if missing else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for reader in done:
                    reader.result()  # raises what ended it
                # (past the timeout: subscribe again, on the masters that were missing too)
            except _LOST as exc:
                log.warning("result listener lost its subscription (%s); resubscribing", exc)
                self._hub.wake_all()
                if isinstance(self._client, redis.asyncio.cluster.RedisCluster):
                    with contextlib.suppress(Exception):
                        await self._client.nodes_manager.initialize()
                await asyncio.sleep(_RETRY_S)
            finally:
                for reader in readers:
                    reader.cancel()
                for reader in readers:
                    with contextlib.suppress(BaseException):
                        await reader
                for pubsub in pubsubs:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                for connection in owned:
                    with contextlib.suppress(Exception):
                        await connection.aclose()

    async def _confirm(self, pubsub: Any, count: int) -> None:
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while count > 0:
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is None:
                    continue
                if message["type"] == "ssubscribe":
                    count -= 1
                elif message["type"] == "smessage":
                    self._hub.deliver(message["data"])

    async def _read(self, pubsub: Any) -> None:
        while True:
            # A bounded wait on the socket (no command is sent), under its timeout.
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "smessage":
                self._hub.deliver(message["data"])
            elif message["type"] == "sunsubscribe":
                raise _Moved(f"unsubscribed from {_text(message['channel'])}")
