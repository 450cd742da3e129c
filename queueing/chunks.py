"""Streamed outputs: a job's chunks on its own Redis stream (``Keys.chunks``), written by a
streaming stage's worker (:class:`ChunkWriter`, one EMIT per step) and followed by readers
(:meth:`queueing.client.AsyncClient.events`, the gateway's Server-Sent Events).

A reader sees :class:`StreamEvent` s, each with its stream entry id (the cursor to resume
after):

- ``chunk``: the item's next output (``seq`` counts from 0 within an attempt);
- ``restart``: the job is being run again (its worker died mid-stream and another claimed
  it, or it was requeued from the dead letters): drop the chunks read so far, the new run's
  follow from seq 0;
- ``end``: the job has ended (``status``, and ``error`` unless done): nothing follows.

Readers are bounded per client (:class:`Followers`, ``BATCHLINE_MAX_STREAMS``), and their
blocking reads go through the client's own connection pool for them, so that open followers
never hold the connections that submits and polls need.

The stream lives ``result_ttl_s`` after its last write while the job runs. An ``end`` written
by the EMIT script (a streaming stage's worker finished the job, or saw it cancelled or failed)
gives it the job's record's expiry: it expires with the job. A job that ends any other way
(dead-lettered, expired before a worker ran it, cancelled while queued) gets no ``end`` entry,
and its stream, if it has one, keeps the running TTL: it expires ``result_ttl_s`` after its
last write.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.errors import DecodeError, InvalidEventId, TooManyStreams
from queueing.keys import Keys
from queueing.message import loads
from queueing.scripts import EMIT, Emitted, emit_call
from queueing.settings import Settings
from queueing.streams import positions_by

CHUNK = "chunk"
RESTART = "restart"
END = "end"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One entry of a job's chunk stream, as readers get it (see the module doc)."""

    job_id: str
    id: str
    """The entry id: resume after it (``Last-Event-ID`` over HTTP)."""
    kind: str
    """``chunk``, ``restart`` or ``end``."""
    value: Any = None
    """A chunk's output."""
    seq: int | None = None
    """A chunk's position within its attempt (0, 1, ...)."""
    attempt: int | None = None
    """The attempt that wrote a chunk, or that a restart starts."""
    status: str | None = None
    """An end's job status (done, failed, expired, cancelled)."""
    error: str | None = None
    """An end's error text (unless done)."""

    @classmethod
    def decode(
        cls, job_id: str, entry_id: bytes | str, fields: Mapping[bytes, bytes]
    ) -> StreamEvent:
        """The event of one entry of a job's chunk stream (DecodeError if it is not one)."""
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        try:
            kind = fields[b"k"].decode()
            if kind == CHUNK:
                return cls(
                    job_id,
                    eid,
                    kind,
                    value=loads(fields[b"data"]),
                    seq=int(fields[b"seq"]),
                    attempt=int(fields[b"a"]),
                )
            if kind == RESTART:
                return cls(job_id, eid, kind, attempt=int(fields[b"a"]))
            if kind == END:
                error = fields.get(b"error")
                return cls(
                    job_id,
                    eid,
                    kind,
                    status=fields[b"status"].decode(),
                    error=error.decode(errors="replace") if error is not None else None,
                )
        except (KeyError, ValueError) as exc:
            raise DecodeError(f"bad chunk stream entry {eid}: {exc}") from exc
        raise DecodeError(f"bad chunk stream entry {eid}: kind {kind!r}")

    def document(self) -> dict[str, Any]:
        """The event as JSON (an SSE event's ``data``), without its id and kind."""
        if self.kind == CHUNK:
            return {"seq": self.seq, "attempt": self.attempt, "value": self.value}
        if self.kind == RESTART:
            return {"attempt": self.attempt}
        doc: dict[str, Any] = {"status": self.status}
        if self.error is not None:
            doc["error"] = self.error
        return doc


def events_of(job_id: str, reply: Any) -> list[StreamEvent]:
    """The events of an XREAD reply on one job's chunk stream."""
    out = []
    for _stream, entries in reply or ():
        for entry_id, fields in entries:
            out.append(StreamEvent.decode(job_id, entry_id, fields))
    return out


STREAM_BLOCK_MS = 1000
"""Longest a reader blocks on a chunk stream before it re-reads the job's status (a job that
ended without an ``end`` entry, cancelled while queued say, ends its readers this soon)."""
STREAM_READ_COUNT = 256
"""Most entries one read of a chunk stream takes."""


MAX_ID_PART = 2**64 - 1
"""Largest part of a stream entry id Redis accepts (each of ``<ms>-<seq>``)."""
_EVENT_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def check_event_id(value: str) -> str:
    """``value`` if it is a cursor to read a chunk stream after: ``<ms>`` or ``<ms>-<seq>``,
    each part at most 2**64-1 ("0": from the start); InvalidEventId if not."""
    match = _EVENT_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None or any(int(part) > MAX_ID_PART for part in match.groups() if part):
        raise InvalidEventId(str(value))
    return value


class Follower:
    """A client's place for one reader of a chunk stream (see :class:`Followers`): it counts
    until released, or until nothing refers to it (a reader dropped before it ever ran)."""

    __slots__ = ("__weakref__", "_followers")

    def __init__(self, followers: Followers) -> None:
        self._followers = followers

    def release(self) -> None:
        """Give the place back (again: nothing)."""
        self._followers.release(self)


class Followers:
    """The bound on one client's concurrent readers of chunk streams: :meth:`take` a place
    before submitting or answering anything, so that past the bound nothing is done. (A lock,
    not an asyncio one: the blocking client's threads share it, and nothing awaits inside.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: weakref.WeakSet[Follower] = weakref.WeakSet()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def take(self) -> Follower:
        """A place; TooManyStreams if ``limit`` are held."""
        with self._lock:
            if len(self._held) >= self.limit:
                raise TooManyStreams(self.limit)
            follower = Follower(self)
            self._held.add(follower)
            return follower

    def release(self, follower: Follower) -> None:
        with self._lock:
            self._held.discard(follower)


class ChunkWriter:
    """Writes one streaming stage's steps (EMIT): per partition, one script call per step."""

    def __init__(self, client: AsyncRedis, settings: Settings, stage: str, consumer: str) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.stage = stage
        self.consumer = consumer
        self._emit = client.register_script(EMIT)

    def item(self, partition: int, entry_id: str, job_id: str) -> Emitted:
        """A blank step of one item (fill it with ``dataclasses.replace``)."""
        return Emitted(
            entry_id,
            job_id,
            self.keys.job_prefix(partition) + job_id,
            self.keys.chunks(job_id),
        )

    async def emit(
        self,
        streams: Sequence[tuple[int, str]],
        items: Sequence[Emitted],
        *,
        now: float | None = None,
    ) -> list[str]:
        """Write one step of every item (each read from the stage's stream in its partition and
        priority lane, ``streams[i]``): per item 'ok', 'fenced' (another consumer holds it now:
        stop, write nothing more), 'ended' (its end was written by this very step: a retry
        after a lost reply) or the status of a job that ended meanwhile (cancelled: stop).

        ``now``: when the step ended (default: now). A retry must pass the first try's: the
        script knows an end as the step's own by it."""
        answers = ["fenced"] * len(items)
        stamp = repr(time.time() if now is None else now)
        for (partition, lane), indexes in positions_by(streams).items():
            keys, args = emit_call(
                self.keys.stream(partition, self.stage, lane),
                self.keys.stats(partition),
                group=Keys.group(self.stage),
                consumer=self.consumer,
                now=stamp,
                ttl=int(self.settings.result_ttl_s),
                stage=self.stage,
                items=[items[i] for i in indexes],
            )
            reply = await self._emit(keys=keys, args=args)
            for i, answer in zip(indexes, reply, strict=True):
                answers[i] = answer.decode() if isinstance(answer, bytes) else str(answer)
        return answers
