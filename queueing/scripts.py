"""The stream protocol's Lua scripts (``queueing/lua/*.lua``), and beside each loader the one
function that packs its arguments.

Each script is one atomic transaction within one partition: every key it touches carries the
partition's hash tag and is declared in KEYS, so it runs within one Redis Cluster slot. Each
script's file says what its KEYS and ARGV hold; the packing functions here are the only
places that build them.

Per item, the hot path costs SUBMIT: XADD + HSET (+ GET/SET with an idempotency key);
NOTE: HGET; FINISH: HMGET + HSET + EXPIRE. Per batch: NOTE's HSET of the entries started, and
in FINISH one XPENDING (the fence), one XACK, one XDEL, one HDEL, a few HINCRBY and one
PUBLISH per channel. (Recovered entries and streaming stages go through START instead of
NOTE: see ``lua/start.lua``.)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

Call = tuple[list[str], list[Any]]
"""(KEYS, ARGV) of one script call."""


def load(name: str) -> str:
    """The source of ``lua/<name>.lua``, after the shared prelude."""
    lua = files("queueing") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Kind(enum.StrEnum):
    """What became of one delivery (FINISH's ``kind``)."""

    DONE = "done"
    """The job's result (value: the encoded result)."""
    FAILED = "failed"
    """The job fails (value: the reason)."""
    EXPIRED = "expired"
    """Its deadline passed before a model ran it (value: the reason)."""
    DEAD = "dead"
    """Dead-lettered: the entry is copied to the dead-letter stream and its job fails."""
    SKIP = "skip"
    """Ack only: the job was cancelled, or has ended."""
    NEXT = "next"
    """Handed to the next stage(s) (value: their input)."""
    JOIN = "join"
    """One branch of a fan-out, collected for its join (value: this branch's output)."""


class Start(enum.StrEnum):
    """START's answer for one job (NOTE's too, which never answers ``dead``)."""

    RUN = "run"
    DEAD = "dead"
    """Started max_deliveries times at this stage without finishing: dead-letter it."""
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DONE = "done"
    FAILED = "failed"
    MISSING = "missing"
    """Its record is gone."""


def entry_range(entry_ids: Sequence[str]) -> tuple[str, str]:
    """The lowest and highest of some stream entry ids (``<ms>-<seq>``)."""
    # (each id parsed once: this runs for every item a worker finishes)
    orders = [(int(ms), int(seq)) for ms, _, seq in (e.partition("-") for e in entry_ids)]
    (low_ms, low_seq), (high_ms, high_seq) = min(orders), max(orders)
    return f"{low_ms}-{low_seq}", f"{high_ms}-{high_seq}"


def fenced_args(
    group: str, consumer: str, now: str, ttl: int, stage: str, entry_ids: Sequence[str]
) -> list[Any]:
    """The ARGV head of a fenced script (FINISH, EMIT: prelude.lua's ``fence``): group,
    consumer, now, ttl, stage, the lowest and highest entry id, the number of items."""
    lowest, highest = entry_range(entry_ids)
    return [group, consumer, now, ttl, stage, lowest, highest, len(entry_ids)]


# -- SUBMIT ------------------------------------------------------------------------------------

SUBMIT = load("submit")


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to submit."""

    id: str
    key: str
    data: bytes
    fmt: str = ""
    """'' for JSON."""
    deadline: str = ""
    idempotency_key: str | None = None
    """The full key name (:meth:`queueing.keys.Keys.idempotency`), None for none."""
    fingerprint: str = ""
    result_ttl: str = ""
    """Seconds its record is kept once it has ended; '' for the default (result_ttl_s)."""


@dataclass(slots=True)
class SubmitCall:
    """One SUBMIT: groups of jobs (each all or none) of one pipeline in one partition."""

    stream: str
    pipeline: str
    stage: str
    now: str
    max_backlog: int
    idempotency_ttl: int
    reply: str
    owner: str = ""
    groups: list[list[NewJob]] = field(default_factory=list)
    webhook: str = ""
    """The URL its jobs' ends are POSTed to ('' none; see :mod:`queueing.webhooks`)."""
    pending: str = ""
    """With a webhook: the partition's set of jobs whose webhook is pending."""
    lane: str = ""
    """The priority lane ('' normal) whose stream ``stream`` is (kept in each job's record)."""

    def pack(self, *, retry: bool = False) -> Call:
        """KEYS and ARGV. ``retry``: an earlier attempt of this very call may have run (its
        reply was lost), so jobs whose record exists are answered, not queued again."""
        keys = [self.stream]
        idem_keys: list[str] = []
        args: list[Any] = [
            self.pipeline,
            self.stage,
            self.now,
            self.max_backlog,
            self.idempotency_ttl,
            self.reply,
            self.owner,
            1 if retry else 0,
            self.webhook,
            self.lane,
        ]
        n_jobs = sum(len(group) for group in self.groups)
        for group in self.groups:
            args += [len(group), int(any(job.idempotency_key is not None for job in group))]
            for job in group:
                keys.append(job.key)
                slot = 0
                if job.idempotency_key is not None:
                    idem_keys.append(job.idempotency_key)
                    slot = 1 + n_jobs + len(idem_keys)
                args += [
                    *(job.id, slot, job.fingerprint, job.deadline, job.fmt, job.data),
                    job.result_ttl,
                ]
        if self.webhook:
            idem_keys.append(self.pending)
        return keys + idem_keys, args


# -- START -------------------------------------------------------------------------------------

START = load("start")


def start_call(job_keys: Sequence[str], now: str, stage: str, max_attempts: int) -> Call:
    return list(job_keys), [now, stage, max_attempts]


NOTE = load("note")


def note_call(started: str, entries: Sequence[tuple[str, str]]) -> Call:
    """``entries``: (entry id, its job's key) of one stream, whose started hash is ``started``."""
    return [started, *(key for _, key in entries)], [entry for entry, _ in entries]


CHARGE = load("charge")


def charge_call(started: str, stage: str, entries: Sequence[tuple[str, str]]) -> Call:
    """``entries``: (entry id, its job's key) of one stream, whose started hash is ``started``."""
    return [started, *(key for _, key in entries)], [stage, *(entry for entry, _ in entries)]


RUNNING = load("running")


def running_call(job_keys: Sequence[str], started: str) -> Call:
    return list(job_keys), [started]


# -- FINISH ------------------------------------------------------------------------------------

FINISH = load("finish")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ``next`` item goes (``join`` is set for a fan-out branch's join)."""

    stage: str
    stream: str
    join: str | None = None
    """The join hash (a fan-out branch)."""
    branch: str = ""
    fan_in: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """One item for FINISH."""

    entry_id: str
    job_id: str
    job_key: str
    kind: Kind
    value: bytes | str = ""
    timing: bytes | str = ""
    deadline: str = ""
    targets: Sequence[Target] = ()


def finish_call(
    stream: str,
    dead: str,
    stats: str,
    started_hash: str,
    *,
    group: str,
    consumer: str,
    now: str,
    ttl: int,
    stage: str,
    started: str,
    items: Sequence[Finished],
) -> Call:
    """``started``: when the batch whose items ran here began ('' none)."""
    keys = [stream, dead, stats, started_hash, *(item.job_key for item in items)]
    slots: dict[str, int] = {}

    def slot(key: str) -> int:
        if key not in slots:
            keys.append(key)
            slots[key] = len(keys)
        return slots[key]

    args = fenced_args(group, consumer, now, ttl, stage, [item.entry_id for item in items])
    args.append(started)
    for item in items:
        args += [item.entry_id, item.job_id, item.kind, item.value, item.timing, item.deadline]
        if item.kind == Kind.NEXT:
            args.append(len(item.targets))
            for target in item.targets:
                args += [slot(target.stream), target.stage]
        elif item.kind == Kind.JOIN:
            (target,) = item.targets
            assert target.join is not None
            join_slot = slot(target.join)
            args += [join_slot, slot(target.stream), target.stage, target.branch, target.fan_in]
    return keys, args


# -- TOUCH, CANCEL, WATCH, ORPHAN --------------------------------------------------------------

TOUCH = load("touch")


def touch_call(stream: str, group: str, consumer: str, entry_ids: Sequence[str]) -> Call:
    lowest, highest = entry_range(entry_ids)
    return [stream], [group, consumer, lowest, highest, *entry_ids]


CANCEL = load("cancel")


def cancel_call(job_key: str, job_id: str, now: str, ttl: int) -> Call:
    return [job_key], [job_id, now, ttl]


WATCH = load("watch")


def watch_call(job_key: str, channel: str) -> Call:
    return [job_key], [channel]


REPLACE = load("replace")


def replace_call(hash_key: str, field: str, before: bytes | str | None, value: bytes) -> Call:
    return [hash_key], [field, "0" if before is None else "1", before or b"", value]


ORPHAN = load("orphan")


def orphan_call(job_key: str, stream: str, job_id: str, now: str, ttl: int) -> Call:
    return [job_key, stream], [job_id, now, ttl]


# -- REQUEUE -----------------------------------------------------------------------------------

REQUEUE = load("requeue")


def requeue_call(
    dead: str,
    stream: str,
    job_key: str,
    stats: str,
    webhooks: str,
    *,
    dead_id: str,
    job_id: str,
    stage: str,
    now: str,
) -> Call:
    return [dead, stream, job_key, stats, webhooks], [dead_id, job_id, stage, now]


# -- EMIT --------------------------------------------------------------------------------------

EMIT = load("emit")


@dataclass(frozen=True, slots=True)
class Emitted:
    """One streaming item's step for EMIT: a chunk (``seq`` is None for none) and/or its end
    (``end``: '' while it streams, 'done' with the result or 'failed' with the reason)."""

    entry_id: str
    job_id: str
    job_key: str
    chunks_key: str
    first: bool = False
    """This attempt's first write for the item (a re-run writes a ``restart`` entry first)."""
    seq: int | None = None
    data: bytes = b""
    end: str = ""
    value: bytes | str = ""
    timing: bytes | str = ""


def emit_call(
    stream: str,
    stats: str,
    *,
    group: str,
    consumer: str,
    now: str,
    ttl: int,
    stage: str,
    items: Sequence[Emitted],
) -> Call:
    keys = [stream, stats]
    args = fenced_args(group, consumer, now, ttl, stage, [item.entry_id for item in items])
    for item in items:
        keys += [item.job_key, item.chunks_key]
        args += [
            item.entry_id,
            item.job_id,
            "1" if item.first else "0",
            "" if item.seq is None else item.seq,
            item.data,
            item.end,
            item.value,
            item.timing,
        ]
    return keys, args
