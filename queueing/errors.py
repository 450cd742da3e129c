"""Every error batchline raises, under one root.

::

    BatchlineError
    ├── ConfigError            a setting has a bad value (the message names the variable)
    ├── BrokerUnavailable      Redis cannot be reached (wraps redis-py's connection errors)
    │   └── PartiallyQueued    some inputs of a submit_many queued, others not (a cluster)
    ├── NotDurable             a durable submit was queued but the server did not fsync it
    ├── DecodeError            a stream entry or payload cannot be decoded
    ├── UnknownPipeline        no pipeline of that name is registered
    ├── UnknownJob             no job of that id (or it expired, or belongs to someone else)
    ├── QueueFull              the first stage's backlog is over its limit (has retry_after)
    ├── TooManyStreams         a client follows BATCHLINE_MAX_STREAMS streams already
    ├── InvalidEventId         a chunk stream cursor (``after``, Last-Event-ID) is not an id
    ├── BrokerFull             Redis is out of memory (maxmemory, noeviction): nothing written
    ├── IdempotencyConflict    an idempotency key was reused with a different input
    └── JobError               a job ended without a result (has job_id)
        ├── JobFailed          a stage raised, or the entry was dead-lettered (has stage)
        ├── JobExpired         the deadline passed before a worker ran it
        ├── JobCancelled       the job was cancelled
        └── ResultTimeout      the caller stopped waiting; the job goes on
"""

from __future__ import annotations


class BatchlineError(Exception):
    """The root of every error batchline raises."""


class ConfigError(BatchlineError, ValueError):
    """A setting has a bad value; the message names the variable."""


class BrokerUnavailable(BatchlineError, ConnectionError):
    """Redis cannot be reached."""


class PartiallyQueued(BrokerUnavailable):
    """A ``submit_many`` whose inputs span partitions (idempotency keys) in a cluster: some
    partitions' masters took their inputs, another was unreachable. ``queued`` maps the index
    of each input queued to its job id; ``failed`` lists the indexes of those not queued
    (nothing of them was written: each partition's share is all or none)."""

    def __init__(self, queued: dict[int, str], failed: list[int], cause: Exception) -> None:
        super().__init__(
            f"{len(queued)} inputs queued, {len(failed)} not (their partition's master is "
            f"unreachable: {cause}); failed input indexes: {failed[:20]}"
        )
        self.queued = queued
        self.failed = failed


class NotDurable(BatchlineError):
    """A durable submit was queued, but the server did not confirm it is on disk (or, in a
    cluster, on a replica). ``job_ids``: the jobs that call queued (they run as usual)."""

    def __init__(self, message: str, job_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.job_ids = job_ids or []


class DecodeError(BatchlineError, ValueError):
    """A stream entry or payload cannot be decoded."""


class UnknownPipeline(BatchlineError, LookupError):
    """No pipeline of that name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown pipeline {name!r}: no worker has registered it")
        self.name = name


class UnknownJob(BatchlineError, LookupError):
    """No job of that id exists (it never did, it expired, or it is someone else's)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job {job_id!r}")
        self.job_id = job_id


class QueueFull(BatchlineError):
    """The first stage's backlog (in the job's priority lane: each lane has the limit) is over
    its limit; try again after ``retry_after`` seconds."""

    def __init__(
        self,
        pipeline: str,
        backlog: int,
        limit: int,
        retry_after: float = 1.0,
        *,
        lane: str = "normal",
    ) -> None:
        where = "" if lane == "normal" else f" in lane {lane!r}"
        super().__init__(
            f"pipeline {pipeline!r} is full{where}: {backlog} queued, limit {limit}; "
            f"retry after {retry_after:g}s"
        )
        self.pipeline = pipeline
        self.lane = lane
        self.backlog = backlog
        self.limit = limit
        self.retry_after = retry_after


class TooManyStreams(BatchlineError):
    """The client follows ``limit`` chunk streams already (``BATCHLINE_MAX_STREAMS``): nothing
    was submitted or read; try again after ``retry_after`` seconds, once some have ended."""

    def __init__(self, limit: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"this client follows {limit} streams already (BATCHLINE_MAX_STREAMS); nothing was "
            f"submitted, retry after {retry_after:g}s"
        )
        self.limit = limit
        self.retry_after = retry_after


class InvalidEventId(BatchlineError, ValueError):
    """A cursor to follow a chunk stream after (``events(after=)``, ``Last-Event-ID``) is not
    an event id: ``<ms>`` or ``<ms>-<seq>``, each part at most 2**64-1 ("0": the start)."""

    def __init__(self, value: str) -> None:
        super().__init__(
            f"invalid event id {value[:40]!r}: expected <ms> or <ms>-<seq>, each part a number "
            'from 0 to 18446744073709551615 ("0": from the start)'
        )
        self.value = value


class BrokerFull(BatchlineError):
    """Redis refused a write: it is at its ``maxmemory`` (with the ``noeviction`` policy, the
    only safe one for a queue). Nothing was written; try again after ``retry_after`` seconds,
    once finished jobs' records have expired or workers have drained the queues."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(
            f"Redis is out of memory ({detail}); nothing was queued, retry after {retry_after:g}s"
        )
        self.retry_after = retry_after


class IdempotencyConflict(BatchlineError):
    """An idempotency key was reused with a different input."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} already names job {job_id} with a different input"
        )
        self.key = key
        self.job_id = job_id


class JobError(BatchlineError):
    """A job ended, or was waited on, without a result."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """A stage raised on this job's item, or its entry was dead-lettered."""

    def __init__(self, job_id: str, error: str, stage: str | None = None) -> None:
        where = f" in stage {stage!r}" if stage else ""
        super().__init__(job_id, f"job {job_id} failed{where}: {error}")
        self.error = error
        self.stage = stage


class JobExpired(JobError):
    """The job's deadline passed before a worker ran it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} expired before a worker ran it")


class JobCancelled(JobError):
    """The job was cancelled."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} was cancelled")


class ResultTimeout(JobError, TimeoutError):
    """The caller stopped waiting for the result; the job itself goes on."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, f"job {job_id} has no result after {timeout:g}s; it goes on")
        self.timeout = timeout
