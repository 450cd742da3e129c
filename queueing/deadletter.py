"""Dead letters: the entries a stage gave up on, and the tools to list, show, requeue and purge
them (``batchline dlq``, the gateway's admin routes and the dashboard stand on this module).

A worker dead-letters an entry that was started ``max_deliveries`` times without finishing (it
crashed or stalled its workers each time), one delivered ``DELIVERY_CAP`` times as often without
being started, or one it cannot decode: FINISH copies the entry, with the reason, to its stage's
dead-letter stream (:meth:`~queueing.keys.Keys.dead`, one per partition) and fails its job.

Requeueing puts the job back on the stage it died in, queued, with that stage's attempts reset
(one REQUEUE script call per job: atomic, within the job's partition); it then runs and ends
once, as any job. A fan-out branch is not requeued alone: its job's other branches were dropped
when it failed, so its join would wait for ever.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.errors import DecodeError
from queueing.keys import Keys, check_name, is_job_id, partition_of
from queueing.registry import PipelineSpec, parse_registry
from queueing.scripts import REQUEUE, requeue_call
from queueing.settings import Settings

PAGE = 500
"""Dead letters read per round trip when scanning a stream."""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a stage's dead-letter stream."""

    id: str
    """Its id in the dead-letter stream (``<ms>-<seq>``: when it was dead-lettered)."""
    partition: int
    stage: str
    job_id: str
    """The job it carried ('' for an entry that named none: an undecodable one)."""
    reason: str
    entry_id: str
    """The id it had in the stage's input stream."""
    enqueued_at: float | None
    data: bytes
    fmt: str
    """'json', or 'tensor' for a raw tensor payload."""

    @property
    def died_at(self) -> float:
        return int(self.id.partition("-")[0]) / 1000

    def to_dict(self, *, with_data: bool = False) -> dict[str, Any]:
        """As JSON; ``with_data`` adds the payload (its text for JSON, its size otherwise)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "stage": self.stage,
            "job": self.job_id or None,
            "reason": self.reason,
            "entry": self.entry_id,
            "died_at": self.died_at,
            "enqueued_at": self.enqueued_at,
            "fmt": self.fmt,
            "bytes": len(self.data),
        }
        if with_data:
            doc["data"] = self.data.decode(errors="replace") if self.fmt == "json" else None
        return doc

    @classmethod
    def decode(
        cls, partition: int, stage: str, dead_id: bytes | str, fields: dict[bytes, bytes]
    ) -> DeadLetter:
        """One dead-letter stream entry (as XRANGE answers it)."""

        def text(name: bytes) -> str:
            return fields.get(name, b"").decode(errors="replace")

        try:
            enqueued_at: float | None = float(fields[b"at"])
        except (KeyError, ValueError):
            enqueued_at = None
        return cls(
            id=dead_id.decode() if isinstance(dead_id, bytes) else str(dead_id),
            partition=partition,
            stage=stage,
            job_id=text(b"job") if is_job_id(text(b"job")) else "",
            reason=text(b"reason"),
            entry_id=text(b"entry"),
            enqueued_at=enqueued_at,
            data=fields.get(b"data", b""),
            fmt=text(b"fmt") or "json",
        )


class Requeue(enum.StrEnum):
    """What became of one dead letter asked to be requeued."""

    REQUEUED = "requeued"
    GONE = "gone"
    """No such dead letter (purged, or requeued already)."""
    MISSING = "missing"
    """Its job's record has expired (result_ttl_s): nothing is left to requeue."""
    ENDED = "ended"
    """Its job is not a failure of this stage now (requeued already, or it ended otherwise)."""
    NO_JOB = "no_job"
    """The entry named no job (it was undecodable): purge it instead."""
    FAN_OUT = "fan_out"
    """A fan-out branch: its job's other branches were dropped when it failed."""


@dataclass(frozen=True)
class Requeued:
    """The answer for one dead letter."""

    letter: DeadLetter
    outcome: Requeue
    detail: str = ""
    """The new entry id (requeued), or the job's status and stage now (ended)."""

    @property
    def message(self) -> str:
        job = self.letter.job_id or f"entry {self.letter.entry_id}"
        return {
            Requeue.REQUEUED: f"{job}: queued again at {self.letter.stage}",
            Requeue.GONE: f"{job}: no such dead letter (purged or requeued already)",
            Requeue.MISSING: f"{job}: its record has expired; nothing to requeue",
            Requeue.ENDED: f"{job}: not requeued, the job is {self.detail} now",
            Requeue.NO_JOB: f"{job}: the entry named no job (undecodable); purge it",
            Requeue.FAN_OUT: f"{job}: a fan-out branch cannot be requeued alone; submit the "
            "input again",
        }[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.letter.job_id or None,
            "dead_letter": self.letter.id,
            "outcome": self.outcome.value,
            "message": self.message,
        }


def full_stage_name(name: str) -> str:
    """``pipeline.stage``, checked (ValueError with what is wrong)."""
    check_name(name)
    if "." not in name:
        raise ValueError(f"name the stage as pipeline.stage, not {name!r}")
    return name


class DeadLetters:
    """The dead letters of every stage, over every partition."""

    def __init__(self, client: AsyncRedis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.partitions = range(settings.partitions)
        self._requeue = client.register_script(REQUEUE)

    async def counts(self, stages: Sequence[str]) -> dict[str, int]:
        """How many dead letters each stage has."""
        pipe = self.redis.pipeline(transaction=False)
        for stage in stages:
            for p in self.partitions:
                pipe.xlen(self.keys.dead(p, stage))
        lengths = await pipe.execute()
        n = len(self.partitions)
        return {stage: sum(lengths[i * n : (i + 1) * n]) for i, stage in enumerate(stages)}

    async def latest(self, stages: Sequence[str], limit: int) -> dict[str, list[DeadLetter]]:
        """The newest ``limit`` dead letters of each stage, newest first (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for stage in stages:
            for p in self.partitions:
                pipe.xrevrange(self.keys.dead(p, stage), count=limit)
        replies = iter(await pipe.execute())
        out: dict[str, list[DeadLetter]] = {}
        for stage in stages:
            letters = [
                DeadLetter.decode(p, stage, dead_id, fields)
                for p in self.partitions
                for dead_id, fields in next(replies)
            ]
            letters.sort(key=_order, reverse=True)
            out[stage] = letters[:limit]
        return out

    async def newest(self, stage: str, limit: int = 100) -> list[DeadLetter]:
        """A stage's newest ``limit`` dead letters, newest first."""
        return (await self.latest([full_stage_name(stage)], limit))[stage]

    async def find(self, job_id: str) -> DeadLetter | None:
        """A job's dead letter, looked for at the stage its record says it failed in (at every
        registered stage if its record has expired); None if there is none."""
        if not is_job_id(job_id):
            return None
        partition = partition_of(job_id)
        final_stage: Any = await self.redis.hget(self.keys.job(job_id), "final_stage")
        if final_stage:
            stages = [final_stage.decode()]
        else:
            specs = parse_registry(await self.redis.hgetall(self.keys.registry))
            stages = [stage.name for spec in specs.values() for stage in spec.stages]
        for stage in stages:
            async for letter in self._scan(partition, stage):
                if letter.job_id == job_id:
                    return letter
        return None

    async def requeue(self, letter: DeadLetter) -> Requeued:
        """Put one dead letter's job back on its stage (see the module doc)."""
        (answer,) = await self._requeue_many([letter])
        return answer

    async def requeue_all(self, stage: str) -> list[Requeued]:
        """Requeue every dead letter of a stage (one script call per job)."""
        stage = full_stage_name(stage)
        answers: list[Requeued] = []
        for p in self.partitions:
            # Up to the newest one now: a job that dies again meanwhile is not taken twice.
            newest: Any = await self.redis.xrevrange(self.keys.dead(p, stage), count=1)
            if not newest:
                continue
            page: list[DeadLetter] = []
            async for letter in self._scan(p, stage, until=newest[0][0]):
                page.append(letter)
                if len(page) == PAGE:
                    answers += await self._requeue_many(page)
                    page = []
            if page:
                answers += await self._requeue_many(page)
        return answers

    async def purge(self, stage: str) -> int:
        """Delete a stage's dead letters (their jobs stay failed); how many there were."""
        stage = full_stage_name(stage)
        pipe = self.redis.pipeline(transaction=False)
        for p in self.partitions:
            pipe.xlen(self.keys.dead(p, stage))
            pipe.delete(self.keys.dead(p, stage))
        replies = await pipe.execute()
        return sum(replies[0::2])

    async def _requeue_many(self, letters: Sequence[DeadLetter]) -> list[Requeued]:
        answers: list[Requeued | None] = [None] * len(letters)
        fan_out = await self._fan_out_branches({letter.stage for letter in letters})
        now = repr(time.time())
        for index, letter in enumerate(letters):
            if not letter.job_id:
                answers[index] = Requeued(letter, Requeue.NO_JOB)
            elif letter.stage in fan_out:
                answers[index] = Requeued(letter, Requeue.FAN_OUT)
            else:
                answers[index] = await self._requeue_one(letter, now)
        return [answer for answer in answers if answer is not None]

    async def _requeue_one(self, letter: DeadLetter, now: str) -> Requeued:
        # Back into its job's priority lane (a job's lane never changes: read before is safe).
        lane: Any = await self.redis.hget(self.keys.job(letter.job_id), "lane")
        keys, args = requeue_call(
            self.keys.dead(letter.partition, letter.stage),
            self.keys.stream(letter.partition, letter.stage, lane.decode() if lane else "normal"),
            self.keys.job(letter.job_id),
            self.keys.stats(letter.partition),
            self.keys.webhooks_pending(letter.partition),
            dead_id=letter.id,
            job_id=letter.job_id,
            stage=letter.stage,
            now=now,
        )
        reply = await self._requeue(keys=keys, args=args)
        outcome, *rest = (part.decode() for part in reply)
        return Requeued(letter, Requeue(outcome), " at ".join(part for part in rest if part))

    async def _fan_out_branches(self, stages: set[str]) -> set[str]:
        """Those of ``stages`` that are fan-out branches, as the registry says."""
        pipelines = sorted({stage.split(".", 1)[0] for stage in stages})
        raw = await self.redis.hmget(self.keys.registry, pipelines)
        branches = set()
        for encoded in raw:
            if encoded is None:
                continue
            try:
                spec = PipelineSpec.decode(encoded)
            except DecodeError:
                continue
            branches |= {s.name for s in spec.stages if s.join is not None and s.name in stages}
        return branches

    async def _scan(
        self, partition: int, stage: str, until: bytes | str = "+"
    ) -> AsyncIterator[DeadLetter]:
        """A stage's dead letters in one partition, oldest first, up to the id ``until``, a
        page per round trip."""
        stream = self.keys.dead(partition, stage)
        start = "-"
        while True:
            page: Any = await self.redis.xrange(stream, min=start, max=until, count=PAGE)
            for dead_id, fields in page:
                yield DeadLetter.decode(partition, stage, dead_id, fields)
            if len(page) < PAGE:
                return
            last = page[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _order(letter: DeadLetter) -> tuple[int, int]:
    ms, _, seq = letter.id.partition("-")
    return int(ms), int(seq)
