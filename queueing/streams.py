"""The stream protocol as one stage's consumer sees it: read, start, finish, claim, touch.

Workers call these; nothing outside ``queueing/`` issues XREADGROUP, XACK or XAUTOCLAIM-like
commands. Every write step is one Lua script per partition (see :mod:`queueing.scripts`).
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import redis.exceptions

from queueing.keys import Keys
from queueing.message import Message, dumps
from queueing.scripts import CLAIM, FINISH, START, TOUCH
from queueing.settings import Settings


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry read from a stage's stream (``fields`` is None if its payload was deleted)."""

    partition: int
    entry_id: str
    fields: dict[bytes, bytes] | None


@dataclass(slots=True)
class Outcome:
    """What became of one delivery, for :meth:`StageQueue.finish`.

    ``kind`` is ``done`` (value = encoded result), ``failed`` / ``expired`` / ``dead``
    (value = the reason), ``next`` (hand the messages in ``targets`` to their stages),
    ``join`` (value = this fan-out branch's output; ``targets`` holds the join stage and the
    join entry's message; this is ``branch`` of ``fan_in`` branches) or
    ``skip`` (ack only: the job was cancelled or has finished)."""

    delivery: Delivery
    job_id: str
    kind: str
    value: bytes | str = ""
    timing: bytes | str = ""
    targets: list[tuple[str, Message]] = field(default_factory=list)
    branch: str = ""
    fan_in: int = 0


def consumer_name(settings: Settings) -> str:
    """This process's consumer name: the configured one, else host-pid."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


class StageQueue:
    """One consumer of one stage, over every partition of its stream."""

    def __init__(
        self, client: redis.asyncio.Redis, settings: Settings, stage: str, consumer: str
    ) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.stage = stage
        self.group = Keys.group(stage)
        self.consumer = consumer
        self.partitions = range(settings.partitions)
        self._streams = {self.keys.stream(p, stage): p for p in self.partitions}
        self._start = client.register_script(START)
        self._finish = client.register_script(FINISH)
        self._claim = client.register_script(CLAIM)
        self._touch = client.register_script(TOUCH)

    async def ensure_groups(self) -> None:
        """Create the consumer group of every partition (from the start of the stream, so
        that entries submitted before any worker existed are read too)."""
        for stream in self._streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self, count: int, block_ms: int | None, *, own_pending: bool = False
    ) -> list[Delivery]:
        """Up to ``count`` new entries, blocking up to ``block_ms`` for the first (None: do
        not block). ``own_pending`` re-reads what this consumer holds already (after a
        restart under the same name)."""
        since = "0" if own_pending else ">"
        reply = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {stream: since for stream in self._streams},
            count=count,
            block=None if own_pending else block_ms,
        )
        return self._deliveries(reply or [])

    def _deliveries(self, reply: Iterable[Any]) -> list[Delivery]:
        out = []
        for stream, entries in reply:
            partition = self._streams[stream.decode() if isinstance(stream, bytes) else stream]
            for entry_id, fields in entries:
                out.append(Delivery(partition, entry_id.decode(), fields or None))
        return out

    async def start(self, deliveries: Sequence[tuple[Delivery, str]]) -> list[str]:
        """Mark the jobs running; per job, ``run`` or the status that forbids running it
        (``cancelled``, ``expired``, ``done``, ``failed``, ``missing``)."""
        by_partition: dict[int, list[int]] = defaultdict(list)
        for index, (delivery, _) in enumerate(deliveries):
            by_partition[delivery.partition].append(index)
        answers: list[str] = [""] * len(deliveries)
        now = repr(time.time())
        for partition, indexes in by_partition.items():
            job_ids = [deliveries[i][1] for i in indexes]
            reply = await self._start(
                args=[self.keys.job_prefix(partition), now, self.stage, *job_ids]
            )
            for i, status in zip(indexes, reply, strict=True):
                answers[i] = status.decode()
        return answers

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Hand off or end each item and ack it, atomically per partition. False for an
        item whose entry another consumer has claimed meanwhile (nothing was written)."""
        by_partition: dict[int, list[int]] = defaultdict(list)
        for index, outcome in enumerate(outcomes):
            by_partition[outcome.delivery.partition].append(index)
        done: list[bool] = [False] * len(outcomes)
        now = repr(time.time())
        ttl = int(self.settings.result_ttl_s)
        for partition, indexes in by_partition.items():
            args: list[Any] = [
                self.group,
                self.consumer,
                self.keys.job_prefix(partition),
                now,
                ttl,
                self.stage,
            ]
            for i in indexes:
                outcome = outcomes[i]
                args += [
                    outcome.delivery.entry_id,
                    outcome.job_id,
                    outcome.kind,
                    outcome.value,
                    outcome.timing,
                    len(outcome.targets),
                ]
                for stage, message in outcome.targets:
                    target: list[Any] = [
                        self.keys.stream(partition, stage),
                        self.keys.entries(partition, stage),
                        stage,
                    ]
                    if outcome.kind == "join":
                        target = [
                            self.keys.joins(message.job_id),
                            *target,
                            outcome.branch,
                            outcome.fan_in,
                        ]
                    target += message.encode()
                    args += [len(target), *target]
            reply = await self._finish(keys=self._partition_keys(partition), args=args)
            for i, ok in zip(indexes, reply, strict=True):
                done[i] = bool(ok)
        return done

    async def claim(self, count: int) -> tuple[list[Delivery], int]:
        """Take over entries idle past the visibility timeout (their consumer died); dead-letter
        those delivered ``max_deliveries`` times. Returns (claimed, number dead-lettered)."""
        claimed: list[Delivery] = []
        dead = 0
        min_idle = int(self.settings.visibility_timeout_s * 1000)
        for partition in self.partitions:
            entries, n_dead = await self._claim(
                keys=self._partition_keys(partition),
                args=[
                    self.group,
                    self.consumer,
                    min_idle,
                    count,
                    self.settings.max_deliveries,
                    self.keys.job_prefix(partition),
                    repr(time.time()),
                    int(self.settings.result_ttl_s),
                    self.stage,
                ],
            )
            dead += int(n_dead)
            for entry_id, flat in entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
                claimed.append(Delivery(partition, entry_id.decode(), fields))
        return claimed, dead

    async def touch(self, deliveries: Iterable[Delivery]) -> None:
        """Reset the idle time of entries this consumer still holds (they are being worked on)."""
        by_partition: dict[int, list[str]] = defaultdict(list)
        for delivery in deliveries:
            by_partition[delivery.partition].append(delivery.entry_id)
        for partition, entry_ids in by_partition.items():
            await self._touch(
                keys=[self.keys.stream(partition, self.stage)],
                args=[self.group, self.consumer, *entry_ids],
            )

    async def backlog(self) -> int:
        """Entries queued or in flight, over all partitions."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xlen(stream)
        return sum(await pipe.execute())

    def _partition_keys(self, partition: int) -> list[str]:
        return [
            self.keys.stream(partition, self.stage),
            self.keys.entries(partition, self.stage),
            self.keys.dead(partition, self.stage),
            self.keys.stats(partition),
        ]


async def heartbeat(
    client: redis.asyncio.Redis, settings: Settings, consumer: str, info: dict[str, Any]
) -> None:
    """Record that ``consumer`` is alive (and what it runs)."""
    keys = Keys(settings.prefix)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.workers, {consumer: time.time()})
    pipe.hset(keys.worker_info, consumer, dumps(info))
    await pipe.execute()


async def retire(client: redis.asyncio.Redis, settings: Settings, consumer: str) -> None:
    """Remove a consumer that stopped cleanly from the live set."""
    keys = Keys(settings.prefix)
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.workers, consumer)
    pipe.hdel(keys.worker_info, consumer)
    await pipe.execute()
