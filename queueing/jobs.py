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
from queueing.message import loads


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

TIMING_PREFIX = "t:"
"""Job-hash fields ``t:<stage>`` hold that stage's timings as JSON."""


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

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        text = {k.decode(): v for k, v in raw.items()}

        def opt_float(name: str) -> float | None:
            value = text.get(name)
            return float(value) if value else None

        def opt_str(name: str) -> str | None:
            value = text.get(name)
            return value.decode() if value else None

        timings = [
            StageTiming(**loads(value))
            for name, value in text.items()
            if name.startswith(TIMING_PREFIX)
        ]
        timings.sort(key=lambda t: t.started_at)
        result = text.get("result")
        return cls(
            id=job_id,
            status=JobStatus(text["status"].decode()),
            pipeline=text["pipeline"].decode(),
            created_at=float(text["created_at"]),
            stage=opt_str("stage"),
            started_at=opt_float("started_at"),
            finished_at=opt_float("finished_at"),
            deadline=opt_float("deadline"),
            result=loads(result) if result is not None else None,
            error=opt_str("error"),
            error_stage=opt_str("final_stage"),
            owner=opt_str("owner"),
            timings=timings,
        )

    def outcome(self) -> Any:
        """The result of a finished job, or the JobError that says why there is none."""
        if self.status is JobStatus.DONE:
            return self.result
        raise self.error_for()

    def error_for(self) -> JobError:
        return job_error(self.id, self.status, self.error, self.error_stage)

    def to_dict(self) -> dict[str, Any]:
        """The public view (the gateway's job document)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "status": str(self.status),
            "pipeline": self.pipeline,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "timings": [t.to_dict() for t in self.timings],
        }
        if self.status is JobStatus.DONE:
            doc["result"] = self.result
        elif self.status.finished:
            doc["error"] = str(self.error_for())
        return doc


def job_error(job_id: str, status: JobStatus, error: str | None, stage: str | None) -> JobError:
    """The error that a job which ended without a result raises."""
    if status is JobStatus.FAILED:
        return JobFailed(job_id, error or "unknown error", stage)
    if status is JobStatus.EXPIRED:
        return JobExpired(job_id)
    if status is JobStatus.CANCELLED:
        return JobCancelled(job_id)
    raise ValueError(f"job {job_id} is {status}, not a failure")


@dataclass(frozen=True, slots=True)
class Notice:
    """The wake-up a finished job publishes: its outcome, so a waiter need not read the record.

    One pub/sub message carries the notices of one script call, each
    ``<job id> <status> <stage> <length>\\n<result JSON or error text>``."""

    job_id: str
    status: JobStatus
    stage: str | None
    value: bytes

    @classmethod
    def decode_all(cls, data: bytes) -> list[Notice]:
        """Every notice in one message; ValueError if it is malformed."""
        notices, at = [], 0
        while at < len(data):
            newline = data.index(b"\n", at)
            job_id, status, stage, length = data[at:newline].decode().split(" ")
            end = newline + 1 + int(length)
            if end > len(data):
                raise ValueError("truncated notice")
            notices.append(cls(job_id, JobStatus(status), stage or None, data[newline + 1 : end]))
            at = end
        return notices

    def outcome(self) -> Any:
        """The result, or raise the JobError that says why there is none."""
        if self.status is JobStatus.DONE:
            return loads(self.value)
        raise job_error(self.job_id, self.status, self.value.decode(errors="replace"), self.stage)
