"""The stream protocol as one stage's consumer sees it: read, note or start, finish, claim,
touch (see ``lua/start.lua`` for which of note and start).

Workers call these; nothing outside ``queueing/`` issues XREADGROUP, XACK or XCLAIM. Every
write step is one Lua script per partition (see :mod:`queueing.scripts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from queueing.cluster import AsyncRedis
from queueing.keys import Keys
from queueing.lanes import DEFAULT_LANE, LANES, RANK
from queueing.message import dumps, job_id_of
from queueing.scripts import (
    CHARGE,
    FINISH,
    NOTE,
    RUNNING,
    START,
    TOUCH,
    Finished,
    Kind,
    Start,
    Target,
    charge_call,
    finish_call,
    note_call,
    running_call,
    start_call,
    touch_call,
)
from queueing.settings import Settings

K = TypeVar("K")

DELIVERY_CAP = 5
"""An entry delivered ``DELIVERY_CAP x max_deliveries`` times without ever being started (its
workers died before they got to it) is dead-lettered too."""


DeliveryKey = tuple[int, str, str]
"""(partition, lane, entry id): what tells an entry in hand from any other."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry read from a stage's stream (``fields`` is None if its payload was deleted)."""

    partition: int
    entry_id: str
    fields: dict[bytes, bytes] | None
    deliveries: int = 1
    """Times the entry was delivered (more than 1 for one claimed from a dead consumer)."""
    lane: str = DEFAULT_LANE
    """The priority lane it was read from (its job's lane: see :mod:`queueing.lanes`)."""
    key: DeliveryKey = field(init=False, repr=False, compare=False)
    """What tells it from any other entry in hand (ids are unique per stream only)."""

    def __post_init__(self) -> None:
        # (made once: workers use it several times per item, in dicts of entries in hand)
        object.__setattr__(self, "key", (self.partition, self.lane, self.entry_id))


@dataclass(slots=True)
class Outcome:
    """What became of one delivery, for :meth:`StageQueue.finish` (see :class:`Kind`).

    ``value`` is the result (``done``), the reason (``failed``, ``expired``, ``dead``), the
    next stages' input (``next``, to each stage of ``targets``) or this fan-out branch's output
    (``join``: ``targets`` holds the join stage; this is ``branch`` of ``fan_in`` branches)."""

    delivery: Delivery
    job_id: str
    kind: Kind
    value: bytes | str = ""
    timing: bytes | str = ""
    deadline: float | None = None
    targets: tuple[str, ...] = ()
    branch: str = ""
    fan_in: int = 0


def too_many_attempts(max_deliveries: int) -> str:
    """Why an entry START answered ``dead`` for is dead-lettered."""
    return (
        f"dead-lettered after {max_deliveries} attempts without finishing: the worker crashed "
        "or stalled on it each time"
    )


def never_started(deliveries: int) -> str:
    """Why an entry delivered DELIVERY_CAP x max_deliveries times is dead-lettered."""
    return (
        f"dead-lettered after {deliveries} deliveries: its workers died before they got to it "
        "each time"
    )


_START_ANSWERS = {answer.value.encode(): answer for answer in Start}
"""START's and NOTE's replies (bytes) as :class:`Start` (a dict lookup, not an Enum call per
item)."""


def consumer_name(settings: Settings) -> str:
    """This process's consumer name: the configured one, else host-pid."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


class StageQueue:
    """One consumer of one stage, over every partition of its stream."""

    def __init__(self, client: AsyncRedis, settings: Settings, stage: str, consumer: str) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.stage = stage
        self.group = Keys.group(stage)
        self.consumer = consumer
        self.partitions = range(settings.partitions)
        self._streams = {
            self.keys.stream(p, stage, lane): (p, lane) for p in self.partitions for lane in LANES
        }
        """Every input stream (each partition's, in each lane) -> (partition, lane)."""
        self._sharded = (
            isinstance(client, redis.asyncio.cluster.RedisCluster) and len(self.partitions) > 1
        )
        """A cluster: the partitions are read one by one (see :meth:`_read_sharded`)."""
        self._reads: dict[int, asyncio.Future[Any]] = {}
        self._ready: list[Delivery] = []
        self._job_prefixes = [self.keys.job_prefix(p) for p in self.partitions]
        self._targets: dict[tuple[int, str, str], str] = {}
        """Stream keys of the stages this one hands to, by (partition, stage, lane)."""
        self._start = client.register_script(START)
        self._note = client.register_script(NOTE)
        self._charge = client.register_script(CHARGE)
        self._running = client.register_script(RUNNING)
        self._finish = client.register_script(FINISH)
        self._touch = client.register_script(TOUCH)

    async def ensure_groups(self) -> None:
        """Create the consumer group of every partition and lane (from the start of the
        stream, so that entries submitted before any worker existed are read too)."""
        for stream in self._streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self,
        count: int,
        block_ms: int | None,
        *,
        own_pending: bool = False,
        lanes: Iterable[str] = LANES,
    ) -> list[Delivery]:
        """Up to ``count`` new entries of each of ``lanes`` (every lane by default), blocking
        up to ``block_ms`` for the first (None: do not block). ``own_pending`` re-reads what
        this consumer holds already (after a restart under the same name)."""
        wanted = set(lanes)
        try:
            return await self._read(count, block_ms, wanted, own_pending)
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # A lane's stream or group is missing (made by a batchline before lanes, or
            # deleted from outside): made now, empty; read again.
            await self.ensure_groups()
            return await self._read(count, block_ms, wanted, own_pending)

    async def _read(
        self, count: int, block_ms: int | None, wanted: set[str], own_pending: bool
    ) -> list[Delivery]:
        since = "0" if own_pending else ">"
        try:
            if self._sharded:
                return await self._read_sharded(count, block_ms, since, wanted)
            reply: Any = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {stream: since for stream, (_, lane) in self._streams.items() if lane in wanted},
                count=count,
                block=None if own_pending else block_ms,
            )
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("UNBLOCKED"):
                raise
            # The stream moved away under a blocked read (its slot migrated to another master,
            # or it was deleted): nothing was delivered; the next read goes where it is now.
            return []
        return self._deliveries(reply)

    async def reread_own(self, count: int) -> list[Delivery]:
        """What this consumer holds already (after a restart under the same name), with the
        times each entry was delivered (this time included), read from XPENDING."""
        deliveries = await self.read(count, None, own_pending=True)
        if not deliveries:
            return deliveries
        times: dict[tuple[int, str, str], int] = {}
        for stream, (partition, lane) in self._streams.items():
            pending: Any = await self.redis.xpending_range(
                stream, self.group, min="-", max="+", count=count, consumername=self.consumer
            )
            for p in pending:
                times[partition, lane, p["message_id"].decode()] = int(p["times_delivered"])
        return [
            Delivery(d.partition, d.entry_id, d.fields, times.get(d.key, 1), d.lane)
            for d in deliveries
        ]

    async def attempts(self, deliveries: Sequence[Delivery]) -> list[int]:
        """How many times this stage has started each recovered delivery's job: START's
        count, plus the run its entry had in a batch of new entries that did not finish,
        counted now and once (CHARGE); 0 for one never started, or whose record or payload is
        gone."""
        answers = [0] * len(deliveries)
        streams = positions_by((d.partition, d.lane) for d in deliveries)
        for (partition, lane), indexes in streams.items():
            entries = []
            for i in indexes:
                delivery = deliveries[i]
                job_id = job_id_of(delivery.fields) if delivery.fields else None
                # (no job: a key of this partition that never exists)
                entries.append((delivery.entry_id, self._job_prefixes[partition] + (job_id or "")))
            started = self.keys.started(partition, self.stage, lane)
            keys, args = charge_call(started, self.stage, entries)
            reply = await self._charge(keys=keys, args=args)
            for i, count in zip(indexes, reply, strict=True):
                answers[i] = int(count)
        return answers

    async def note(self, deliveries: Sequence[tuple[Delivery, str]]) -> list[Start]:
        """For a batch of new entries, instead of :meth:`start`: note that they begin (the
        attempt is counted only if this worker dies before FINISH: see ``lua/start.lua``);
        per job, whether to run it, or the status that forbids it."""
        answers: list[Start] = [Start.MISSING] * len(deliveries)
        streams = positions_by((d.partition, d.lane) for d, _ in deliveries)
        for (partition, lane), indexes in streams.items():
            prefix = self._job_prefixes[partition]
            keys, args = note_call(
                self.keys.started(partition, self.stage, lane),
                [(deliveries[i][0].entry_id, prefix + deliveries[i][1]) for i in indexes],
            )
            reply = await self._note(keys=keys, args=args)
            for i, status in zip(indexes, reply, strict=True):
                answers[i] = _START_ANSWERS[status]
        return answers

    async def mark_running(self, job_ids: Sequence[tuple[int, str]], started: float) -> None:
        """Mark 'running' the still queued jobs of a batch of new entries that runs long
        enough for it to show (``job_ids``: (partition, job id))."""
        for partition, indexes in positions_by(p for p, _ in job_ids).items():
            prefix = self._job_prefixes[partition]
            keys, args = running_call([prefix + job_ids[i][1] for i in indexes], repr(started))
            await self._running(keys=keys, args=args)

    def _deliveries(self, reply: Any) -> list[Delivery]:
        out = []
        for stream, entries in reply or ():
            partition, lane = self._streams[
                stream.decode() if isinstance(stream, bytes) else stream
            ]
            for entry_id, fields in entries:
                out.append(Delivery(partition, entry_id.decode(), fields or None, lane=lane))
        return out

    async def _read_sharded(
        self, count: int, block_ms: int | None, since: str, lanes: set[str]
    ) -> list[Delivery]:
        """:meth:`read` in a cluster, where one XREADGROUP cannot name the streams of several
        partitions (each is in its own slot; a partition's lanes share it): what earlier
        blocking reads brought first; then one non-blocking read per partition in one pipeline
        (the cluster client sends each to its master); if all are empty, one blocking read per
        partition at once, returning with the first that answers. The others stay in flight
        for the next call, so no entry they bring is dropped (it waits in ``_ready``)."""
        if not self._ready and since == ">":
            self._collect_reads()
        if not self._ready:
            idle = [p for p in self.partitions if p not in self._reads]
            replies = await asyncio.gather(
                *(self._read_one(p, since, count, lanes) for p in idle), return_exceptions=True
            )
            # What the masters that answered delivered is kept (it is pending on this consumer
            # now) before an error of another (a master failing over) is raised.
            for reply in replies:
                if not isinstance(reply, BaseException):
                    self._ready += self._deliveries(reply)
            errors = [reply for reply in replies if isinstance(reply, BaseException)]
            if errors and not self._ready:
                raise errors[0]
        if not self._ready and block_ms is not None and since == ">":
            for partition in self.partitions:
                if partition not in self._reads:
                    read = self._read_one(partition, ">", count, set(LANES), block_ms)
                    self._reads[partition] = asyncio.ensure_future(read)
            await asyncio.wait(
                self._reads.values(),
                timeout=block_ms / 1000 + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )
            self._collect_reads()
        out, self._ready = self._ready[:count], self._ready[count:]
        return out

    async def _read_one(
        self, partition: int, since: str, count: int, lanes: set[str], block_ms: int | None = None
    ) -> Any:
        """One partition's XREADGROUP (of its ``lanes``), sent to the master that owns its
        slot. (Through the cluster client's own routing, each read cost two COMMAND GETKEYS
        round trips to learn where its keys are, XREADGROUP's being "movable".) A slot that
        moved answers nothing this time: the client learns the new owner for the next read."""
        assert isinstance(self.redis, redis.asyncio.cluster.RedisCluster)
        block = () if block_ms is None else ("BLOCK", block_ms)
        streams = [s for s, (p, lane) in self._streams.items() if p == partition and lane in lanes]
        try:
            return await self.redis.execute_command(
                "XREADGROUP",
                "GROUP",
                self.group,
                self.consumer,
                "COUNT",
                count,
                *block,
                "STREAMS",
                *streams,
                *[since] * len(streams),
                target_nodes=self.redis.get_node_from_key(streams[0]),
            )
        except redis.exceptions.AskError:  # (MOVED too)
            await self.redis.nodes_manager.initialize()
            await asyncio.sleep(0.01)  # (a slot mid-migration answers ASK at once)
            return None

    def _collect_reads(self) -> None:
        """Move what finished blocking reads brought to ``_ready`` (raising the first error)."""
        error: BaseException | None = None
        for partition, read in list(self._reads.items()):
            if not read.done():
                continue
            del self._reads[partition]
            if read.cancelled():
                continue
            if read.exception() is not None:
                error = error or read.exception()
                continue
            self._ready += self._deliveries(read.result())
        if error is not None:
            raise error

    async def close(self) -> None:
        """Stop the blocking reads still in flight (cluster only). An entry one of them was
        about to bring stays pending for this consumer: a live worker claims it after the
        visibility timeout (and this one re-reads it when it restarts under the same name)."""
        for read in self._reads.values():
            read.cancel()
        for read in self._reads.values():
            with contextlib.suppress(BaseException):
                await read
        self._reads.clear()

    async def start(self, deliveries: Sequence[tuple[Delivery, str]]) -> list[Start]:
        """Mark the jobs running and count this attempt; per job, whether to run it (or
        dead-letter it, or skip it: the status that forbids running it)."""
        answers: list[Start] = [Start.MISSING] * len(deliveries)
        now = repr(time.time())
        for partition, indexes in positions_by(d.partition for d, _ in deliveries).items():
            prefix = self._job_prefixes[partition]
            keys, args = start_call(
                [prefix + deliveries[i][1] for i in indexes],
                now,
                self.stage,
                self.settings.max_deliveries,
            )
            reply = await self._start(keys=keys, args=args)
            for i, status in zip(indexes, reply, strict=True):
                answers[i] = _START_ANSWERS[status]
        return answers

    async def finish(self, outcomes: Sequence[Outcome], started: float | None = None) -> list[bool]:
        """Hand off or end each item and ack it, atomically per partition. False for an
        item whose entry another consumer has claimed meanwhile (nothing was written).
        ``started``: when the batch whose items ran began (the started_at of those jobs that
        ran without START)."""
        done: list[bool] = [False] * len(outcomes)
        now = repr(time.time())
        ttl = int(self.settings.result_ttl_s)
        streams = positions_by((o.delivery.partition, o.delivery.lane) for o in outcomes)
        for (partition, lane), indexes in streams.items():
            keys, args = finish_call(
                self.keys.stream(partition, self.stage, lane),
                self.keys.dead(partition, self.stage),
                self.keys.stats(partition),
                self.keys.started(partition, self.stage, lane),
                group=self.group,
                consumer=self.consumer,
                now=now,
                ttl=ttl,
                stage=self.stage,
                started="" if started is None else repr(started),
                items=[self._finished(partition, lane, outcomes[i]) for i in indexes],
            )
            reply = await self._finish(keys=keys, args=args)
            for i, ok in zip(indexes, reply, strict=True):
                done[i] = bool(ok)
        return done

    def _finished(self, partition: int, lane: str, outcome: Outcome) -> Finished:
        """One item for FINISH; a job handed on stays in its lane."""
        job_id = outcome.job_id
        targets: list[Target] = []
        for stage in outcome.targets:
            stream = self._targets.get((partition, stage, lane))
            if stream is None:
                stream = self.keys.stream(partition, stage, lane)
                self._targets[partition, stage, lane] = stream
            if outcome.kind == Kind.JOIN:
                join = self.keys.joins(job_id)
                targets.append(Target(stage, stream, join, outcome.branch, outcome.fan_in))
            else:
                targets.append(Target(stage, stream))
        return Finished(
            outcome.delivery.entry_id,
            job_id,
            # (an entry naming no job has none: a key of this partition that never exists)
            self._job_prefixes[partition] + job_id,
            outcome.kind,
            outcome.value,
            outcome.timing,
            repr(outcome.deadline) if outcome.deadline is not None else "",
            targets,
        )

    async def claim(self, count: int) -> tuple[list[Delivery], int]:
        """Take over up to ``count`` entries idle past the visibility timeout (their consumer
        died). Returns (claimed, number whose payload was deleted: acked and dropped)."""
        claimed: list[Delivery] = []
        gone = 0
        min_idle = int(self.settings.visibility_timeout_s * 1000)
        by_lane = sorted(self._streams.items(), key=lambda item: RANK[item[1][1]])
        for stream, (partition, lane) in by_lane:  # (the higher lanes first, every partition's)
            if len(claimed) >= count:
                break
            idle: Any = await self.redis.xpending_range(
                stream, self.group, min="-", max="+", count=count - len(claimed), idle=min_idle
            )
            if not idle:
                continue
            ids: list[Any] = [p["message_id"] for p in idle]
            got: Any = await self.redis.xclaim(stream, self.group, self.consumer, min_idle, ids)
            deliveries = {p["message_id"]: int(p["times_delivered"]) + 1 for p in idle}
            taken = set()
            for entry_id, fields in got:
                if entry_id is None:
                    continue
                taken.add(entry_id)
                claimed.append(
                    Delivery(
                        partition, entry_id.decode(), fields or None, deliveries[entry_id], lane
                    )
                )
            # Entries another consumer took meanwhile are not returned; deleted ones are not
            # either (and the claim dropped them from the group): ack those for older servers.
            deleted = [e for e in ids if e not in taken]
            pipe = self.redis.pipeline(transaction=False)
            if deleted:
                existing = [await self.redis.xrange(stream, e, e, count=1) for e in deleted]
                deleted = [e for e, found in zip(deleted, existing, strict=True) if not found]
                if deleted:
                    pipe.xack(stream, self.group, *deleted)
                    pipe.hdel(self.keys.started(partition, self.stage, lane), *deleted)
                    pipe.hincrby(self.keys.stats(partition), f"{self.stage}:dead", len(deleted))
                    gone += len(deleted)
            n_claimed = len(taken)
            if n_claimed:
                pipe.hincrby(self.keys.stats(partition), f"{self.stage}:redelivered", n_claimed)
            if pipe:
                await pipe.execute()
        return claimed, gone

    async def touch(self, deliveries: Iterable[Delivery]) -> None:
        """Reset the idle time of entries this consumer still holds (they are being worked on),
        and of those a cluster's reads brought that wait in ``_ready`` for the next batch."""
        by_stream: dict[tuple[int, str], list[str]] = defaultdict(list)
        for delivery in [*deliveries, *self._ready]:  # (none: nothing to send)
            by_stream[delivery.partition, delivery.lane].append(delivery.entry_id)
        for (partition, lane), entry_ids in by_stream.items():
            keys, args = touch_call(
                self.keys.stream(partition, self.stage, lane), self.group, self.consumer, entry_ids
            )
            await self._touch(keys=keys, args=args)

    async def backlog(self) -> int:
        """Entries queued or in flight, over all partitions and lanes."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xlen(stream)
        return sum(await pipe.execute())


def positions_by(keys: Iterable[K]) -> dict[K, list[int]]:
    """The positions of ``keys``, grouped by key (in order of first appearance): to send one
    call per partition, or per stream, of a batch and put the answers back in place."""
    out: dict[K, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        out[key].append(index)
    return out


async def heartbeat(
    client: AsyncRedis, settings: Settings, consumer: str, info: dict[str, Any]
) -> None:
    """Record that ``consumer`` is alive (and what it runs)."""
    keys = Keys(settings.prefix)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.workers, {consumer: time.time()})
    pipe.hset(keys.worker_info, consumer, dumps(info))
    await pipe.execute()


async def retire(client: AsyncRedis, settings: Settings, consumer: str) -> None:
    """Remove a consumer that stopped cleanly from the live set."""
    keys = Keys(settings.prefix)
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.workers, consumer)
    pipe.hdel(keys.worker_info, consumer)
    await pipe.execute()
