"""Every Redis key, stream, group and channel name. Nothing else formats a key.

Keys that a job touches carry its partition as a hash tag (``bl:{0}:...``) so that every
transaction stays within one Redis Cluster slot.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

_JOB_ID = re.compile(r"([0-9]{1,4})-([0-9a-f]{32})")
_STAGE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)?")


SETTINGS_FIELD_PREFIX = "settings:"
"""Registry-hash fields starting with this hold live settings (see :meth:`Keys.settings_field`)."""


def new_job_id(partition: int) -> str:
    """A job id: its partition, then 128 random bits (unguessable)."""
    return f"{partition}-{secrets.token_hex(16)}"


def new_job_ids(partitions: Sequence[int]) -> list[str]:
    """:func:`new_job_id` for each of ``partitions``, from one read of the system's random
    source (a read per id cost a submit of many jobs a system call each)."""
    tokens = secrets.token_hex(16 * len(partitions))
    return [f"{p}-{tokens[32 * i : 32 * i + 32]}" for i, p in enumerate(partitions)]


def partition_of(job_id: str) -> int:
    """The partition a job id lives in; ValueError if it is not a job id."""
    match = _JOB_ID.fullmatch(job_id)
    if match is None:
        raise ValueError(f"not a job id: {job_id!r}")
    return int(match.group(1))


def is_job_id(job_id: str) -> bool:
    return _JOB_ID.fullmatch(job_id) is not None


def check_name(name: str) -> str:
    """Pipeline and stage names: letters, digits, ``_`` and ``-`` (``pipeline.stage``)."""
    if not _STAGE.fullmatch(name):
        raise ValueError(
            f"bad name {name!r}: use letters, digits, '_' and '-' (and one '.' in pipeline.stage)"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "bl"

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}"

    def stream(self, partition: int, stage: str, lane: str = "normal") -> str:
        """A stage's input stream in one priority lane (see :mod:`queueing.lanes`); its
        consumer group is named after the stage. The ``normal`` lane is the stage's stream of
        old (``...:in:<stage>``); the others are siblings in the same slot."""
        if lane == "normal":
            return f"{self._tag(partition)}:in:{stage}"
        return f"{self._tag(partition)}:in:{stage}:{lane}"

    def started(self, partition: int, stage: str, lane: str = "normal") -> str:
        """Hash: entry id -> '1' for the entries of a stage's stream (one lane's) that NOTE
        admitted to a batch, until FINISH acks them (see ``lua/start.lua``)."""
        return f"{self._tag(partition)}:started:{stage}" + ("" if lane == "normal" else f":{lane}")

    def dead(self, partition: int, stage: str) -> str:
        """A stage's dead-letter stream."""
        return f"{self._tag(partition)}:dead:{stage}"

    def job(self, job_id: str) -> str:
        return self.job_prefix(partition_of(job_id)) + job_id

    def idempotency(self, partition: int, pipeline: str, key: str) -> str:
        return f"{self._tag(partition)}:idem:{pipeline}:{key}"

    def joins(self, job_id: str) -> str:
        """Hash: the branch outputs a fan-out join has collected for one job."""
        return f"{self._tag(partition_of(job_id))}:join:{job_id}"

    def chunks(self, job_id: str) -> str:
        """Stream: a streaming job's chunks, for readers to follow and resume (see
        ``queueing/lua/emit.lua``); it expires with the job when EMIT wrote its end, else
        ``result_ttl_s`` after its last write (see :mod:`queueing.chunks`)."""
        return f"{self._tag(partition_of(job_id))}:chunks:{job_id}"

    @property
    def registry(self) -> str:
        """Hash: pipeline name -> spec (JSON)."""
        return f"{self.prefix}:registry"

    @staticmethod
    def settings_field(stage: str) -> str:
        """Field of the registry hash holding a stage's live batch settings (JSON). A ``:``
        never occurs in a pipeline name, so it cannot collide with a spec's field; in the
        registry's own key, so a change is a single-key write (cluster-safe)."""
        return f"{SETTINGS_FIELD_PREFIX}{stage}"

    @property
    def workers(self) -> str:
        """Sorted set: consumer name -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    @property
    def worker_info(self) -> str:
        """Hash: consumer name -> what it runs (JSON)."""
        return f"{self.prefix}:workers:info"

    def stage_stats(self, stage: str) -> str:
        """Stream: what a stage's workers did, one entry per heartbeat (capped; no job key)."""
        return f"{self.prefix}:stagestats:{stage}"

    def stats(self, partition: int) -> str:
        """Hash: counters (``<stage>:<what>`` -> count) for metrics and ``batchline status``."""
        return f"{self._tag(partition)}:stats"

    def job_prefix(self, partition: int) -> str:
        """What a job id is appended to, to make its key (for the Lua scripts)."""
        return f"{self._tag(partition)}:job:"

    def webhooks_pending(self, partition: int) -> str:
        """Set: the jobs of a partition whose webhook is not yet handed to rq (the notifier's
        to-do list, kept across its restarts)."""
        return f"{self._tag(partition)}:webhooks"

    def bulk_cancel(self, bulk_id: str) -> str:
        """String: set when a bulk job (an rq job) is asked to stop."""
        return f"{self.prefix}:bulk:cancel:{bulk_id}"

    def notify(self, partition: int, listener: str) -> str:
        """Sharded pub/sub channel of one listening process (a client or a gateway) for the
        jobs of one partition: in the partition's slot, so that the scripts SPUBLISH on the
        master that ran them, and only that master's shard carries it."""
        return f"{self._tag(partition)}:notify:{listener}"

    @staticmethod
    def group(stage: str) -> str:
        return stage
