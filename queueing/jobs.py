"""Job records: a job's lifecycle, timings and outcome, kept in one Redis hash.

::

    queued -> running -> done | failed
       |         |
       +---------+-----> expired | cancelled

Terminal records carry a TTL (``result_ttl_s``); live ones do not, so an accepted job cannot
vanish while it waits.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queueing.errors import JobCancelled, JobError, JobExpired, JobFailed
from queueing.message import dumps, loads


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class StageTiming:
    """How one stage handled one job."""

    stage: str
    queue_wait_s: float
    """From the entry's arrival in the stage's stream to the start of its batch."""
    batch_size: int
    compute_s: float
    """The batch handler's run time (the whole batch's)."""
    started_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "queue_wait_s": self.queue_wait_s,
            "batch_size": self.batch_size,
            "compute_s": self.compute_s,
            "started_at": self.started_at,
        }


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job's hash."""

    id: str
    status: JobStatus
    pipeline: str
    created_at: float
    stage: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None
    result: Any = None
    error: str | None = None
    error_stage: str | None = None
    owner: str | None = None
    timings: list[StageTiming] = field(default_factory=list)
    priority: str = "normal"
    """The lane it waits in at every stage: ``high``, ``normal`` or ``low``."""

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        """The record of a job's hash (as HGETALL answers it)."""
        return Snapshot.from_hash(job_id, raw).record()

    def outcome(self) -> Any:
        """The result of a finished job, or the JobError that says why there is none."""
        if self.status is JobStatus.DONE:
            return self.result
        raise self.error_for()

    def error_for(self) -> JobError:
        return job_error(self.id, self.status, self.error, self.error_stage)


def job_error(job_id: str, status: JobStatus, error: str | None, stage: str | None) -> JobError:
    """The error that a job which ended without a result raises."""
    if status is JobStatus.FAILED:
        return JobFailed(job_id, error or "unknown error", stage)
    if status is JobStatus.EXPIRED:
        return JobExpired(job_id)
    if status is JobStatus.CANCELLED:
        return JobCancelled(job_id)
    raise ValueError(f"job {job_id} is {status}, not a failure")


def _webhook(raw: Mapping[Any, Any]) -> bytes:
    """A job's webhook deliveries (see :mod:`queueing.webhooks`) as a JSON object."""
    status = raw.get(b"webhook_status")
    return dumps(
        {
            "url": raw[b"webhook"].decode(errors="replace"),
            "attempts": int(raw.get(b"webhook_attempts", 0)),
            "last_status": status.decode() if status else None,
            "last_error": (raw.get(b"webhook_error") or b"").decode(errors="replace") or None,
            "final": raw.get(b"webhook_final") == b"1",
        }
    )


def _number(raw: bytes) -> float | None:
    return float(raw) if raw else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job as stored, not yet decoded: what its wake-up notice carries when it ends, or what
    a read of its hash gives. ``document()`` renders it without parsing its result.

    A notice is ``<job> <status> <stage> <pipeline> <created_at> <started_at> <finished_at>
    <#timings> <#value> <lane>\n<timings><value>``; one pub/sub message carries the notices of
    one script call. (A notice without its lane, from a worker of before lanes were in notices,
    is read as ``normal``.) ``timings`` are the stages' timing objects, comma-joined;
    ``value`` is the result's JSON (done), the error text (failed, expired, cancelled), or
    empty (live)."""

    job_id: str
    status: JobStatus
    pipeline: str
    created_at: bytes
    started_at: bytes = b""
    finished_at: bytes = b""
    stage: str | None = None
    """Where the job is (live), or the stage that ended it."""
    timings: bytes = b""
    value: bytes = b""
    owner: str | None = None
    deadline: bytes = b""
    webhook: bytes = b""
    """A job with a webhook: its deliveries as a JSON object (url, attempts, last_status,
    last_error, final), for the document."""
    lane: str = "normal"
    """Its priority lane (``high``, ``normal``, ``low``)."""

    @classmethod
    def decode_all(cls, data: bytes) -> list[Snapshot]:
        """Every notice in one message; ValueError if it is malformed."""
        notices, at = [], 0
        while at < len(data):
            newline = data.index(b"\n", at)
            (
                job_id,
                status,
                stage,
                pipeline,
                created,
                started,
                finished,
                n_timings,
                n_value,
                *lane,
            ) = data[at:newline].split(b" ")
            if len(lane) > 1:
                raise ValueError("a notice with too many fields")
            timings_end = newline + 1 + int(n_timings)
            end = timings_end + int(n_value)
            if end > len(data):
                raise ValueError("truncated notice")
            notices.append(
                cls(
                    job_id.decode(),
                    JobStatus(status.decode()),
                    pipeline.decode(),
                    created,
                    started,
                    finished,
                    stage.decode() or None,
                    data[newline + 1 : timings_end],
                    data[timings_end:end],
                    lane=lane[0].decode() if lane else "normal",
                )
            )
            at = end
        return notices

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[Any, Any]) -> Snapshot:
        """A job's hash (HGETALL's answer: bytes to bytes)."""
        status = JobStatus(raw[b"status"].decode())
        if status is JobStatus.DONE:
            value = raw.get(b"result", b"")
        elif status.finished:
            value = raw.get(b"error", b"")
        else:
            value = b""
        stage = raw.get(b"final_stage") if status.finished else raw.get(b"stage")
        owner = raw.get(b"owner")
        return cls(
            job_id,
            status,
            raw[b"pipeline"].decode(),
            raw.get(b"created_at", b""),
            raw.get(b"started_at", b""),
            raw.get(b"finished_at", b""),
            stage.decode() or None if stage else None,
            raw.get(b"timings", b""),
            value,
            owner.decode() if owner else None,
            raw.get(b"deadline", b""),
            _webhook(raw) if b"webhook" in raw else b"",
            raw[b"lane"].decode() if b"lane" in raw else "normal",
        )

    def outcome(self) -> Any:
        """The result, or raise the JobError that says why there is none."""
        if self.status is JobStatus.DONE:
            return loads(self.value)
        raise self.error()

    def error(self) -> JobError:
        return job_error(self.job_id, self.status, self.value.decode(errors="replace"), self.stage)

    def timing_list(self) -> list[StageTiming]:
        if not self.timings:
            return []
        timings = [StageTiming(**t) for t in loads(b"[" + self.timings + b"]")]
        timings.sort(key=lambda t: t.started_at)
        return timings

    def record(self) -> JobRecord:
        """The decoded record."""
        finished = self.status.finished
        return JobRecord(
            id=self.job_id,
            status=self.status,
            pipeline=self.pipeline,
            created_at=_number(self.created_at) or 0.0,
            stage=None if finished else self.stage,
            started_at=_number(self.started_at),
            finished_at=_number(self.finished_at),
            deadline=_number(self.deadline),
            result=loads(self.value) if self.status is JobStatus.DONE else None,
            error=self.value.decode(errors="replace") if finished and self.value else None,
            error_stage=self.stage if finished else None,
            owner=self.owner,
            timings=self.timing_list(),
            priority=self.lane,
        )

    def document(self, url: str) -> bytes:
        """The public view as JSON (the gateway's job document), the result spliced in as
        stored rather than parsed and re-encoded."""
        head = (
            b'{"id":"%s","status":"%s","pipeline":%s,"priority":"%s","created_at":%s,'
            b'"started_at":%s,'
        ) % (
            self.job_id.encode(),
            self.status.value.encode(),
            dumps(self.pipeline),
            self.lane.encode(),
            self.created_at or b"null",
            self.started_at or b"null",
        )
        body = b'"finished_at":%s,"timings":[%s],"url":%s' % (
            self.finished_at or b"null",
            self.timings,
            dumps(url),
        )
        if self.webhook:
            body += b',"webhook":%s' % self.webhook
        if self.status is JobStatus.DONE:
            tail = b',"result":%s}\n' % self.value
        elif self.status.finished:
            tail = b',"error":%s}\n' % dumps(str(self.error()))
        else:
            tail = b"}\n"
        return head + body + tail
