"""Bulk jobs: what the CLI, the gateway and the rq job share about inferring a whole file.

A bulk job is an rq job on the queue :data:`QUEUE` (run by a plain ``rq worker
batchline-bulk``), whose function, ``workers.bulk.run_bulk``, streams a file through a pipeline
with ``Client.map``. Its id is the rq job's id; its progress lives in the rq job's ``meta``
(:class:`Progress`); its arguments are one :class:`BulkSpec` (as a dict). This module enqueues,
reads and cancels bulk jobs; it never runs one (rq is named by string, so the gateway imports
neither the worker code nor a model).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from queueing.cluster import is_cluster
from queueing.errors import BatchlineError, ConfigError, UnknownJob
from queueing.keys import Keys
from queueing.settings import Settings

QUEUE = "batchline-bulk"
"""The rq queue of bulk jobs (``rq worker batchline-bulk``)."""
FUNCTION = "workers.bulk.run_bulk"
FORMATS = ("jsonl", "csv", "parquet")


class UnknownBulk(UnknownJob):
    """No bulk job has that id (or it is another key's): a 404 like an unknown job."""

    def __init__(self, bulk_id: str) -> None:
        BatchlineError.__init__(self, f"unknown bulk job {bulk_id!r}")
        self.job_id = self.bulk_id = bulk_id


def format_of(path: str, given: str | None = None) -> str:
    """The input format: ``given``, else from the file's extension (``.jsonl``/``.ndjson``,
    ``.csv``, ``.parquet``)."""
    if given:
        if given not in FORMATS:
            raise ValueError(f"unknown format {given!r}: use one of {', '.join(FORMATS)}")
        return given
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path!r}: pass --format jsonl, csv or parquet")


@dataclass(frozen=True)
class BulkSpec:
    """What one bulk job does. Paths are as the rq worker sees them."""

    pipeline: str
    input: str
    output: str
    failures: str = ""
    """The side file of failed rows ('' : ``<output>.failed.jsonl``)."""
    format: str = "jsonl"
    column: str = ""
    """CSV/Parquet: the column holding each row's input (as JSON); '' : the row as a dict."""
    max_in_flight: int = 1000
    checkpoint_rows: int = 10_000
    """A checkpoint (fsync, then the offsets in meta) at least every this many rows..."""
    checkpoint_s: float = 2.0
    """... and every this many seconds."""
    timeout_s: float | None = None
    owner: str = ""
    every_s: float = 0.0
    """Run again this long after each run ends (0: once)."""

    def __post_init__(self) -> None:
        if not self.failures:
            object.__setattr__(self, "failures", self.output + ".failed.jsonl")
        if self.max_in_flight < 1 or self.checkpoint_rows < 1:
            raise ValueError("max_in_flight and checkpoint_rows must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> BulkSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def describe(self) -> str:
        """What ``rq info`` and rq-dashboard show for the job."""
        every = f" every {self.every_s:g}s" if self.every_s else ""
        return f"batchline bulk {self.pipeline}: {self.input} -> {self.output}{every}"


@dataclass
class Progress:
    """A bulk job's progress, as kept in its rq job's ``meta`` (key ``bulk``)."""

    state: str = "queued"
    """queued, scheduled, running, done, cancelled, failed."""
    total: int | None = None
    done: int = 0
    failed: int = 0
    rows: int = 0
    """Input rows accounted for (done + failed) at the last checkpoint or after."""
    items_per_s: float = 0.0
    eta_s: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    checkpoint: dict[str, int] = field(default_factory=dict)
    """The last durable point: rows, out (results bytes), fail (failures bytes), input (bytes
    read, JSONL only). Only what is fsync'd is named here."""
    runs: int = 0
    """How many times the job has started (a resumed one > 1)."""
    error: str = ""

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Progress:
        doc = meta.get("bulk") or {}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, (self.done + self.failed) / self.total)


KEEP_S = 7 * 86400
"""How long a bulk job is kept once it has ended: its rq record, and the folder of an upload
over HTTP (its input, results and failures)."""


def prune_uploads(folder: str | os.PathLike[str], keep_s: float = KEEP_S) -> list[str]:
    """Delete the upload folders under ``folder`` that nothing has written to for ``keep_s``
    (their rq job is gone by then); their names."""
    root = Path(folder)
    if not root.is_dir():
        return []
    cutoff = time.time() - keep_s
    removed = []
    for upload in root.iterdir():
        if not upload.is_dir():
            continue
        try:
            touched = max([upload.stat().st_mtime, *(f.stat().st_mtime for f in upload.iterdir())])
        except OSError:
            continue  # (another gateway removed it meanwhile)
        if touched < cutoff:
            shutil.rmtree(upload, ignore_errors=True)
            removed.append(upload.name)
    return removed


RqConnection = redis.Redis
"""rq's connection to its (standalone) server: what :func:`rq_connection` opens, for the layers
above to hold and hand back without importing redis-py."""


def rq_connection(settings: Settings) -> RqConnection:
    """A plain client for rq (which speaks to one server, not a cluster) at REDIS_URL."""
    if not settings.redis_url:
        raise ConfigError("bulk jobs need a Redis server: set REDIS_URL (or pass --redis-url)")
    if is_cluster(settings.redis_url):
        raise ConfigError(
            "bulk files, webhooks and schedules run on rq, which needs a standalone Redis: "
            f"REDIS_URL={settings.redis_url} names a node of a Redis Cluster"
        )
    try:
        return redis.Redis.from_url(settings.redis_url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL={settings.redis_url!r} is not a valid Redis URL") from exc


def bulk_queue(connection: redis.Redis) -> Queue:
    return Queue(QUEUE, connection=connection)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h``, ``2d`` in seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 10m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_at(text: str) -> datetime:
    """An ISO time (``2027-01-01T02:00``; UTC unless it names its zone)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO date-time: {text!r} (e.g. 2027-01-01T02:00)") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


BULK_RETRIES = 3
"""How often rq runs a bulk job again after a failure (each run resumes from its checkpoint)."""
RETRY_INTERVALS = [0, 30, 120]
"""Seconds before each retry: the first at once, so the job of a worker that was killed (rq
finds it abandoned once its heartbeat lapses) resumes without waiting for the scheduler."""


def enqueue(
    connection: redis.Redis,
    spec: BulkSpec,
    *,
    at: datetime | None = None,
    delay_s: float | None = None,
    job_id: str | None = None,
) -> Job:
    """Enqueue a bulk job (now, at ``at``, or in ``delay_s``); its rq job."""
    queue = bulk_queue(connection)
    progress = Progress(state="scheduled" if (at or delay_s) else "queued")
    options: dict[str, Any] = {
        "args": (spec.to_dict(),),
        "description": spec.describe(),
        "meta": {"bulk": progress.to_meta(), "pipeline": spec.pipeline, "owner": spec.owner},
        "job_timeout": -1,  # a file takes what it takes; a killed run resumes (checkpoints)
        "result_ttl": KEEP_S,
        "failure_ttl": KEEP_S,
        "retry": Retry(max=BULK_RETRIES, interval=RETRY_INTERVALS),
        "job_id": job_id,
    }
    if at is not None:
        job: Job = queue.enqueue_at(at, FUNCTION, **options)
        return job
    if delay_s is not None:
        return queue.enqueue_in(timedelta(seconds=delay_s), FUNCTION, **options)
    return queue.enqueue(FUNCTION, **options)


def fetch(connection: redis.Redis, bulk_id: str) -> Job:
    """The rq job of a bulk job (UnknownBulk if there is none, or it is another kind)."""
    try:
        job = Job.fetch(bulk_id, connection=connection)
    except (NoSuchJobError, ValueError) as exc:
        raise UnknownBulk(bulk_id) from exc
    if job.origin != QUEUE or "bulk" not in job.meta:
        raise UnknownBulk(bulk_id)
    return job


def spec_of(job: Job) -> BulkSpec:
    return BulkSpec.from_dict(job.args[0])


def document(job: Job) -> dict[str, Any]:
    """A bulk job as the CLI and the gateway show it."""
    progress = Progress.from_meta(job.meta)
    spec = spec_of(job)
    status = job.get_status(refresh=False)
    state = progress.state
    if status is not None and status.value in ("failed", "stopped", "canceled"):
        state = "cancelled" if status.value == "canceled" else status.value
    if status is not None and status.value == "scheduled":
        state = "scheduled"
    doc: dict[str, Any] = {
        "id": job.id,
        "pipeline": spec.pipeline,
        "state": state,
        "rq_status": status.value if status is not None else None,
        "input": spec.input,
        "output": spec.output,
        "failures": spec.failures,
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "items_per_s": round(progress.items_per_s, 1),
        "eta_s": None if progress.eta_s is None else round(progress.eta_s, 1),
        "runs": progress.runs,
        "every_s": spec.every_s or None,
        "enqueued_at": _iso(job.enqueued_at),
        "updated_at": progress.updated_at,
        "description": job.description,
    }
    if progress.error:
        doc["error"] = progress.error
    if status is not None and status.value == "failed" and job.exc_info:
        doc["error"] = job.exc_info.strip().splitlines()[-1]
    return doc


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def list_ids(connection: redis.Redis) -> list[str]:
    """Every bulk job rq knows: queued, scheduled, running, finished, failed, cancelled."""
    queue = bulk_queue(connection)
    ids: list[str] = list(queue.get_job_ids())
    for registry in (
        ScheduledJobRegistry,
        StartedJobRegistry,
        FinishedJobRegistry,
        FailedJobRegistry,
        CanceledJobRegistry,
    ):
        ids += registry(queue=queue).get_job_ids()
    return list(dict.fromkeys(ids))


def list_documents(connection: redis.Redis, owner: str = "") -> list[dict[str, Any]]:
    docs = []
    for job in Job.fetch_many(list_ids(connection), connection=connection):
        if job is None or "bulk" not in job.meta:
            continue
        if owner and job.meta.get("owner") != owner:
            continue
        docs.append(document(job))
    docs.sort(key=lambda d: d["enqueued_at"] or "", reverse=True)
    return docs


def cancel(connection: redis.Redis, keys: Keys, bulk_id: str) -> dict[str, Any]:
    """Cancel a bulk job: a queued or scheduled one never runs; a running one stops at its
    next result, and the items it has queued are cancelled (never reach a model). Its next
    scheduled run (``--every``) is not made."""
    job = fetch(connection, bulk_id)
    connection.set(keys.bulk_cancel(bulk_id), 1, ex=7 * 86400)
    status = job.get_status()
    if status is not None and status.value in ("queued", "scheduled", "deferred"):
        job.cancel()
        job.meta["bulk"] = {**job.meta["bulk"], "state": "cancelled", "updated_at": time.time()}
        job.save_meta()  # type: ignore[no-untyped-call]
    return document(fetch(connection, bulk_id))
