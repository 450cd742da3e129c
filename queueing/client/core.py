"""What the two clients share and what does no I/O: planning submits (which script calls, with
which arguments) and reading their replies, cancels, and job records.

A :class:`SubmitPlan` gathers the inputs of one or more requests and packs them into as few
SUBMIT calls as it can: one per (pipeline, partition, owner). Each request stays all or none
within a partition; requests in one call do not affect each other (the gateway puts the
submits of all the requests that arrive in one event-loop tick into one plan).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from queueing.connection import is_unknown_command
from queueing.errors import (
    BatchlineError,
    BrokerUnavailable,
    ConfigError,
    IdempotencyConflict,
    NotDurable,
    PartiallyQueued,
    QueueFull,
    UnknownJob,
)
from queueing.jobs import JobStatus, Snapshot
from queueing.keys import Keys, is_job_id, new_job_ids, partition_of
from queueing.lanes import DEFAULT_LANE, check_lane
from queueing.message import JSON, encode_payload
from queueing.registry import PipelineSpec
from queueing.scripts import Call, NewJob, SubmitCall, cancel_call, orphan_call, watch_call
from queueing.settings import Settings
from queueing.webhooks import NOTIFIER, check_url

log = logging.getLogger(__name__)

MAX_SUBMIT_MANY = 10_000
"""Most inputs one request may hold: its script holds the server while it runs."""
SUBMIT_CHUNK = 256
"""Inputs ``map`` submits per round trip."""


@dataclass(slots=True)
class _Request:
    """One caller's inputs: where each landed (call index, group index, position)."""

    places: list[tuple[int, int, int]] = field(default_factory=list)


class SubmitPlan:
    """The SUBMIT calls for the inputs of several requests (see the module doc)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.calls: list[SubmitCall] = []
        self._index: dict[tuple[str, int, str, str, str], int] = {}
        self._requests: list[_Request] = []
        self._specs: list[PipelineSpec] = []

    def add(
        self,
        spec: PipelineSpec,
        inputs: Sequence[Any],
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        owner: str | None = None,
        result_ttl_s: float | None = None,
        webhook: str | None = None,
        priority: str | None = None,
    ) -> int:
        """Plan one request; returns its number (for :meth:`results`). ``result_ttl_s``: how
        long its jobs are kept once ended (default: the ``result_ttl_s`` setting); ``webhook``:
        a URL each job's document is POSTed to when it ends (:mod:`queueing.webhooks`);
        ``priority``: its jobs' lane (:mod:`queueing.lanes`; default ``normal``).
        ValueError for a bad argument (too many inputs, a timeout or ttl <= 0, keys that do
        not match the inputs, a webhook that is not an http(s) URL, an unknown priority)."""
        core = self.core
        lane = check_lane(priority)
        if webhook is not None:
            webhook = check_url(webhook)
        if len(inputs) > MAX_SUBMIT_MANY:
            raise ValueError(
                f"{len(inputs)} inputs in one submit; at most {MAX_SUBMIT_MANY} "
                "(map() takes any number)"
            )
        keys: list[str | None] = (
            list(idempotency_keys) if idempotency_keys is not None else [None] * len(inputs)
        )
        if len(keys) != len(inputs):
            raise ValueError(f"{len(keys)} idempotency keys for {len(inputs)} inputs")
        now = time.time()
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
            deadline = now + timeout_s if deadline is None else min(deadline, now + timeout_s)
        stamp = repr(deadline) if deadline is not None else ""
        if result_ttl_s is not None and not 1 <= result_ttl_s < 1e9:
            raise ValueError(f"result_ttl_s must be 1 to 1e9 seconds, got {result_ttl_s}")
        ttl = "" if result_ttl_s is None else str(int(result_ttl_s))
        # Inputs without an idempotency key share one partition, so one script takes them
        # all or none; a keyed input lives where its key hashes.
        shared = core.partition_for(spec.name, None)
        # Everything that can fail (encoding) before anything is added to the plan.
        partitions = [shared if k is None else core.partition_for(spec.name, k) for k in keys]
        placed: list[tuple[int, NewJob]] = []
        for value, idem, partition, job_id in zip(
            inputs, keys, partitions, new_job_ids(partitions), strict=True
        ):
            fmt, data = encode_payload(value)
            placed.append(
                (
                    partition,
                    NewJob(
                        job_id,
                        core.keys.job_prefix(partition) + job_id,
                        data,
                        "" if fmt == JSON else fmt,
                        stamp,
                        None if idem is None else core.keys.idempotency(partition, spec.name, idem),
                        "" if idem is None else hashlib.sha256(data).hexdigest(),
                        ttl,
                    ),
                )
            )
        request = _Request()
        groups: dict[int, tuple[int, int, list[NewJob]]] = {}
        for partition, job in placed:
            if partition not in groups:
                call_index = self._call(spec, partition, owner or "", webhook or "", lane)
                in_call = self.calls[call_index].groups
                in_call.append([])
                groups[partition] = (call_index, len(in_call) - 1, in_call[-1])
            call_index, group_index, group = groups[partition]
            group.append(job)
            request.places.append((call_index, group_index, len(group) - 1))
        self._requests.append(request)
        self._specs.append(spec)
        return len(self._requests) - 1

    def _call(
        self,
        spec: PipelineSpec,
        partition: int,
        owner: str,
        webhook: str = "",
        lane: str = DEFAULT_LANE,
    ) -> int:
        key = (spec.name, partition, owner, webhook, lane)
        index = self._index.get(key)
        if index is None:
            core = self.core
            limit = spec.max_backlog or core.settings.max_backlog
            index = self._index[key] = len(self.calls)
            self.calls.append(
                SubmitCall(
                    stream=core.keys.stream(partition, spec.entry.name, lane),
                    pipeline=spec.name,
                    stage=spec.entry.name,
                    now=repr(time.time()),
                    max_backlog=max(1, -(-limit // core.settings.partitions)),
                    idempotency_ttl=int(core.settings.result_ttl_s),
                    reply=core.channel(partition)
                    + (" " + core.keys.notify(partition, NOTIFIER) if webhook else ""),
                    owner=owner,
                    webhook=webhook,
                    pending=core.keys.webhooks_pending(partition) if webhook else "",
                    lane="" if lane == DEFAULT_LANE else lane,
                )
            )
        return index

    def results(
        self, replies: Sequence[Any], not_durable: Mapping[int, str] | None = None
    ) -> list[list[tuple[str, bool]] | BatchlineError | Exception]:
        """Per request: each input's job id and whether this call created it (else it was
        named by its idempotency key), or the error that request met. ``not_durable``: the
        calls (by index) that ran but were not confirmed durable, with why: a request with
        jobs in one gets NotDurable naming its own jobs (and only those)."""
        not_durable = not_durable or {}
        out: list[list[tuple[str, bool]] | BatchlineError | Exception] = []
        for number, request in enumerate(self._requests):
            ids: list[tuple[str, bool]] = []
            error: Exception | None = None
            unreachable: list[int] = []
            for index, (call_index, group_index, position) in enumerate(request.places):
                reply = replies[call_index]
                if isinstance(reply, BrokerUnavailable):  # (a cluster: that master only)
                    error = error or reply
                    unreachable.append(index)
                    continue
                if isinstance(reply, Exception):
                    error = reply
                    break
                answer = reply[group_index]
                kind = answer[0]
                if kind == b"conflict":
                    idem = self.calls[call_index].groups[group_index][int(answer[2]) - 1]
                    error = IdempotencyConflict(_user_key(idem.idempotency_key), answer[1].decode())
                    break
                if kind == b"full":
                    spec = self._specs[number]
                    settings = self.core.settings
                    limit = spec.max_backlog or settings.max_backlog
                    lane = self.calls[call_index].lane or DEFAULT_LANE
                    backlog = int(answer[1]) * settings.partitions
                    error = QueueFull(spec.name, backlog, limit, lane=lane)
                    break
                ids.append(
                    (answer[2 + 2 * position].decode(), answer[1 + 2 * position] == b"queued")
                )
            if unreachable and ids and len(ids) + len(unreachable) == len(request.places):
                assert error is not None
                missing = set(unreachable)
                queued = [i for i in range(len(request.places)) if i not in missing]
                done = {i: job_id for i, (job_id, _) in zip(queued, ids, strict=True)}
                error = PartiallyQueued(done, unreachable, error)
            unsure = [not_durable[c] for c, _, _ in request.places if c in not_durable]
            if error is None and unsure:
                error = NotDurable(unsure[0], [job_id for job_id, _ in ids])
            out.append(error if error is not None else ids)
        return out


NOT_SYNCED = (
    "the server did not fsync its AOF within 5 s (is appendfsync set to 'no'?): the job is "
    "queued, but not known to be on disk"
)
NOT_REPLICATED = (
    "no replica of the partition's master acknowledged the submit within 5 s: the job is "
    "queued, but a failover of that master before it replicates loses it"
)


def _user_key(full: str | None) -> str:
    """The key a caller gave, from its full key name (``...:idem:<pipeline>:<key>``)."""
    return (full or "").split(":idem:", 1)[-1].split(":", 1)[-1]


class Core:
    """Everything the twins share: settings, keys, this client's channels, known pipelines."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.listener_id = secrets.token_hex(8)
        self.channels = [
            self.keys.notify(partition, self.listener_id)
            for partition in range(settings.partitions)
        ]
        """This client's wake-up channel in each partition (see :mod:`queueing.waiters`)."""
        self.specs: dict[str, PipelineSpec] = {}
        self._next_partition = itertools.count()
        self.waitaof = settings.durable_submit

    def partition_for(self, pipeline: str, idempotency_key: str | None) -> int:
        n = self.settings.partitions
        if idempotency_key is not None:
            return zlib.crc32(f"{pipeline}:{idempotency_key}".encode()) % n
        return next(self._next_partition) % n

    def check_job_id(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise UnknownJob(job_id)
        return job_id

    def snapshot(self, job_id: str, raw: Mapping[Any, Any]) -> Snapshot:
        if not raw:
            raise UnknownJob(job_id)
        return Snapshot.from_hash(job_id, raw)

    def cancel_call(self, job_id: str) -> Call:
        self.check_job_id(job_id)
        return cancel_call(
            self.keys.job(job_id), job_id, repr(time.time()), int(self.settings.result_ttl_s)
        )

    def cancel_reply(self, job_id: str, reply: bytes | None) -> JobStatus:
        if reply is None:
            raise UnknownJob(job_id)
        before = JobStatus(reply.decode())
        return JobStatus.CANCELLED if not before.finished else before

    def channel(self, partition: int) -> str:
        """This client's wake-up channel for the jobs of ``partition``."""
        return self.channels[partition]

    def watch_call(self, job_id: str) -> Call:
        return watch_call(self.keys.job(job_id), self.channel(partition_of(job_id)))

    def orphan_call(self, snapshot: Snapshot) -> Call | None:
        """The ORPHAN check for a job live for longer than the visibility timeout (None for a
        younger one, or one not at a stage's stream)."""
        created = float(snapshot.created_at or 0)
        if snapshot.status.finished or not snapshot.stage:
            return None
        if time.time() - created < self.settings.visibility_timeout_s:
            return None
        job_id = snapshot.job_id
        return orphan_call(
            self.keys.job(job_id),
            self.keys.stream(partition_of(job_id), snapshot.stage, snapshot.lane),
            job_id,
            repr(time.time()),
            int(self.settings.result_ttl_s),
        )

    def not_synced(self, reply: Sequence[int], calls: int) -> dict[int, str]:
        """WAITAOF's answer as :meth:`SubmitPlan.results` takes it: every call, if the AOF
        was not fsynced."""
        if int(reply[0]) >= 1:
            return {}
        return dict.fromkeys(range(calls), NOT_SYNCED)

    def waitaof_failed(self, exc: redis.exceptions.ResponseError) -> None:
        if is_unknown_command(exc):
            log.warning(
                "this Redis server has no WAITAOF (it came in 7.2); durable submits rely on "
                "its appendfsync setting instead"
            )
            self.waitaof = False
            return
        raise ConfigError(f"BATCHLINE_DURABLE_SUBMIT needs AOF on the server: {exc}") from exc
