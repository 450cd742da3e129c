"""Waking waiters: one pub/sub connection per process, no polling, no connection per waiter.

A finished job's script PUBLISHes its id on the channel of every process waiting for it (the
submitter's channel is in the record from the start; another process adds its own with the
WATCH script). A listener wakes the local waiters of that id. The record stays the source of
truth: a waiter always re-reads it after waking, and when the pub/sub connection drops every
waiter is woken to re-read, so a missed message costs a read, never a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, defaultdict

import redis
import redis.asyncio
import redis.exceptions

log = logging.getLogger(__name__)

_RETRY_S = 0.5


class _Recent:
    """The ids most recently announced, so that a waiter registered just after its job's
    announcement (a job can finish before ``submit`` returns) is woken at once."""

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ids


class Listener:
    """Blocking twin: a daemon thread reading one channel, waking ``threading.Event`` waiters."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self.channel = channel
        self._waiters: defaultdict[str, set[threading.Event]] = defaultdict(set)
        self._recent = _Recent()
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

    def register(self, job_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters[job_id].add(event)
            if job_id in self._recent:
                event.set()
        return event

    def unregister(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                events = [e for group in self._waiters.values() for e in group]
            else:
                self._recent.add(job_id)
                events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                self._ready.set()
                self._wake(None)  # anything finished while we were not subscribed
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message["type"] == "message":
                        self._wake(message["data"].decode())
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self._error = exc
                self._wake(None)
                self._stop.wait(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


class AsyncListener:
    """Asyncio twin: one task reading one channel, waking ``asyncio.Event`` waiters."""

    def __init__(self, client: redis.asyncio.Redis, channel: str) -> None:
        self._client = client
        self.channel = channel
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._recent = _Recent()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening; returns once the subscription is in place."""
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="batchline-listener")
        assert self._ready is not None
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            self._task.result()  # re-raises why the listener died

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        if job_id in self._recent:
            event.set()
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        events = self._waiters.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[job_id]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wake(self, job_id: str | None) -> None:
        if job_id is None:
            for events in self._waiters.values():
                for event in events:
                    event.set()
        else:
            self._recent.add(job_id)
            for event in self._waiters.get(job_id, ()):
                event.set()

    async def _run(self) -> None:
        assert self._ready is not None
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                self._ready.set()
                self._wake(None)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        self._wake(message["data"].decode())
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self._wake(None)
                await asyncio.sleep(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
