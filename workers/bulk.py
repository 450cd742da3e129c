"""The bulk job: one file through one pipeline, run by a plain ``rq worker batchline-bulk``.

:func:`run_bulk` reads the input row by row, feeds the rows to ``Client.map`` (a bounded window
of jobs in flight, so memory does not grow with the file), and writes each result, in input
order, to the output file; a row that failed (bad input, or a job that failed, expired or was
cancelled) goes to the side file with its reason instead. Lines look like::

    results:  {"row": 0, "result": ...}
    failures: {"row": 7, "error": "...", "input": ...}      (input: what the row held)

Resuming. Every ``checkpoint_rows`` rows or ``checkpoint_s`` seconds, both files are flushed
and fsync'd, and only then are their sizes (and the rows accounted for, and the input offset)
saved in the rq job's meta. A run that finds a checkpoint truncates the files to it (a tail
written after it may be torn, or lack rows before it) and goes on from the next row, so a
worker killed mid-file costs what was in flight since the last checkpoint, never what is
written. Rows in flight when the worker died were queued to the pipeline and are run again
by the resumed job (at-least-once per row, exactly-once per output line).
"""

from __future__ import annotations

import collections
import csv
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
from rq import get_current_job
from rq.job import Job as RqJob

from queueing.bulk import BulkSpec, Progress, enqueue
from queueing.client import Client, Job
from queueing.errors import ConfigError, JobError
from queueing.keys import Keys
from queueing.settings import Settings

log = logging.getLogger(__name__)


class BadRow(Exception):
    """A row that could not be read as an input (it never reaches the pipeline)."""

    def __init__(self, message: str, raw: Any) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(slots=True)
class Row:
    index: int
    value: Any
    end: int = 0
    """Input bytes consumed once this row is read (JSONL; 0 for other formats)."""


# -- readers -----------------------------------------------------------------------------------


def read_rows(spec: BulkSpec, skip_rows: int = 0, offset: int = 0) -> Iterator[Row]:
    """The input's rows from row ``skip_rows`` on (JSONL: from byte ``offset``, which is where
    row ``skip_rows`` starts); a row's value is a BadRow when it cannot be read."""
    if spec.format == "jsonl":
        yield from _jsonl(spec.input, skip_rows, offset)
    elif spec.format == "csv":
        yield from _skip(_csv(spec.input, spec.column), skip_rows)
    elif spec.format == "parquet":
        yield from _skip(_parquet(spec.input, spec.column), skip_rows)
    else:
        raise ValueError(f"unknown format {spec.format!r}")


def count_rows(spec: BulkSpec) -> int:
    """How many rows the input holds (one pass; JSONL counts its non-blank lines)."""
    if spec.format == "jsonl":
        n = 0
        with open(spec.input, "rb") as f:
            for line in f:
                n += bool(line.strip())
        return n
    if spec.format == "parquet":
        return int(_pyarrow_parquet().ParquetFile(spec.input).metadata.num_rows)
    return sum(1 for _ in _csv(spec.input, spec.column))


def _jsonl(path: str, index: int, offset: int) -> Iterator[Row]:
    with open(path, "rb") as f:
        f.seek(offset)
        position = offset
        for line in f:
            position += len(line)
            if not line.strip():
                continue
            try:
                value: Any = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                value = BadRow(
                    f"row {index} is not JSON: {exc}", line.decode(errors="replace").rstrip("\r\n")
                )
            yield Row(index, value, position)
            index += 1


def _cell(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _csv(path: str, column: str) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if column and reader.fieldnames and column not in reader.fieldnames:
            raise ValueError(f"{path} has no column {column!r}; it has {reader.fieldnames}")
        for index, record in enumerate(reader):
            if column:
                yield Row(index, _cell(record[column]))
            else:
                yield Row(index, {k: _cell(v) for k, v in record.items()})


def _parquet(path: str, column: str) -> Iterator[Row]:
    index = 0
    for batch in _pyarrow_parquet().ParquetFile(path).iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield Row(index, record[column] if column else record)
            index += 1


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigError(
            "reading Parquet needs pyarrow in the rq worker: pip install 'batchline[parquet]'"
        ) from exc
    return pyarrow.parquet


def _skip(rows: Iterator[Row], n: int) -> Iterator[Row]:
    for row in rows:
        if row.index >= n:
            yield row


# -- the job -----------------------------------------------------------------------------------


class Output:
    """The results and failures files, written from a checkpoint on."""

    def __init__(self, spec: BulkSpec, checkpoint: dict[str, int]) -> None:
        self.results = _open_at(spec.output, checkpoint.get("out", 0))
        self.failures = _open_at(spec.failures, checkpoint.get("fail", 0))

    def result(self, index: int, value: Any) -> None:
        self.results.write(orjson.dumps({"row": index, "result": value}) + b"\n")

    def failure(self, index: int, error: str, raw: Any) -> None:
        doc = {"row": index, "error": error, "input": raw}
        self.failures.write(orjson.dumps(doc, default=str) + b"\n")

    def sync(self) -> tuple[int, int]:
        """Flush and fsync both files; their sizes."""
        for f in (self.results, self.failures):
            f.flush()
            os.fsync(f.fileno())
        return self.results.tell(), self.failures.tell()

    def close(self) -> None:
        self.results.close()
        self.failures.close()


def _open_at(path: str, size: int) -> IO[bytes]:
    """``path`` open for writing at byte ``size`` (what lies past it is cut off)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    f = os.fdopen(fd, "wb", buffering=1 << 16)
    f.truncate(size)
    f.seek(size)
    return f


CANCEL_POLL_S = 0.5
"""How often a running bulk job looks for a cancel request."""


class _Tracking(Client):
    """A client that keeps the ids of the jobs submitted and not yet consumed, in order (what
    ``map`` has in flight), so that a cancel reaches them."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.submitted: collections.deque[str] = collections.deque()

    def submit_many(self, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = super().submit_many(*args, **kwargs)
        self.submitted.extend(job.id for job in jobs)
        return jobs


class BulkRun:
    """One run of a bulk job (a fresh one, or a resumed one)."""

    def __init__(self, job: RqJob, spec: BulkSpec, settings: Settings) -> None:
        self.job = job
        self.spec = spec
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.progress = Progress.from_meta(job.get_meta(refresh=True))
        self.cancelled = False

    def run(self) -> dict[str, Any]:
        progress, spec = self.progress, self.spec
        progress.runs += 1
        progress.state = "running"
        progress.error = ""
        checkpoint = progress.checkpoint or {}
        # What happened after the last checkpoint is done again: the counts go back to it.
        progress.rows = checkpoint.get("rows", 0)
        progress.done = checkpoint.get("done", 0)
        progress.failed = checkpoint.get("failed", 0)
        if progress.total is None:
            progress.total = count_rows(spec)
        progress.started_at = progress.started_at or time.time()
        self.save()
        output = Output(spec, checkpoint)
        try:
            client = _Tracking(self.settings)
            with client:
                self._stream(client, output, checkpoint)
            self.checkpoint(output, final=True)
        finally:
            output.close()
        progress.state = "cancelled" if self.cancelled else "done"
        progress.eta_s = 0.0 if not self.cancelled else None
        self.save()
        return {"done": progress.done, "failed": progress.failed, "state": progress.state}

    def _stream(self, client: _Tracking, output: Output, checkpoint: dict[str, int]) -> None:
        spec, progress = self.spec, self.progress
        # Each row read, in order: its index, end offset, the BadRow it is (or None), its value.
        order: collections.deque[tuple[int, int, BadRow | None, Any]] = collections.deque()
        rows = read_rows(spec, progress.rows, checkpoint.get("input", 0))

        def inputs() -> Iterator[Any]:
            for row in rows:
                if isinstance(row.value, BadRow):
                    order.append((row.index, row.end, row.value, None))
                else:
                    order.append((row.index, row.end, None, row.value))
                    yield row.value

        self._run_started = time.monotonic()
        self._rows_at_start = progress.rows
        self._last_sync = time.monotonic()
        self._last_sync_rows = progress.rows
        results: Generator[Any, None, None] = client.map(  # type: ignore[assignment]
            spec.pipeline,
            inputs(),
            max_in_flight=spec.max_in_flight,
            timeout_s=spec.timeout_s,
            return_errors=True,
            cancel_on_close=True,
        )
        stop = threading.Event()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(client, stop), name="bulk-cancel", daemon=True
        )
        watcher.start()
        try:
            for value in results:
                if self.cancelled:  # (what ends now was cancelled, or is dropped with it)
                    break
                client.submitted.popleft()
                self._drain_bad(order, output)
                index, end, _, given = order.popleft()
                if isinstance(value, JobError):
                    output.failure(index, str(value), given)
                    progress.failed += 1
                else:
                    output.result(index, value)
                    progress.done += 1
                self._advance(index, end, output)
            else:
                self._drain_bad(order, output)
        finally:
            stop.set()
            results.close()  # a break (cancel) or an error: the jobs in flight are cancelled
            watcher.join()

    def _watch_cancel(self, client: _Tracking, stop: threading.Event) -> None:
        """In a thread: once ``batchline bulk cancel`` asks, cancel every job in flight (the
        map then gets their ends, and the loop stops), even while none is finishing."""
        key = self.keys.bulk_cancel(self.job.id)
        while not stop.wait(CANCEL_POLL_S):
            try:
                if not self.job.connection.exists(key):
                    continue
                self.cancelled = True
                # (deque.copy() is one C call: the map's thread cannot change it meanwhile)
                for job_id in client.submitted.copy():
                    client.cancel(job_id)
            except Exception:
                # A Redis blip: ask again at the next poll (a cancel is idempotent).
                log.exception("bulk %s: the cancel watcher failed; trying again", self.job.id)
                continue
            return

    def _drain_bad(
        self, order: collections.deque[tuple[int, int, BadRow | None, Any]], out: Output
    ) -> None:
        while order and order[0][2] is not None:
            index, end, bad, _ = order.popleft()
            assert bad is not None
            out.failure(index, str(bad), bad.raw)
            self.progress.failed += 1
            self._advance(index, end, out)

    def _advance(self, index: int, end: int, output: Output) -> None:
        self.progress.rows = index + 1
        self._input_end = end
        now = time.monotonic()
        if (
            self.progress.rows - self._last_sync_rows >= self.spec.checkpoint_rows
            or now - self._last_sync >= self.spec.checkpoint_s
        ):
            self.checkpoint(output)

    def checkpoint(self, output: Output, *, final: bool = False) -> None:
        """fsync the files, then name them durable in meta (never the other way round)."""
        progress = self.progress
        out, fail = output.sync()
        progress.checkpoint = {
            "rows": progress.rows,
            "done": progress.done,
            "failed": progress.failed,
            "out": out,
            "fail": fail,
            "input": getattr(self, "_input_end", progress.checkpoint.get("input", 0)),
        }
        elapsed = time.monotonic() - self._run_started
        ran = progress.rows - self._rows_at_start
        progress.items_per_s = ran / elapsed if elapsed > 0 else 0.0
        left = (progress.total or 0) - progress.rows
        progress.eta_s = left / progress.items_per_s if progress.items_per_s > 0 else None
        self._last_sync = time.monotonic()
        self._last_sync_rows = progress.rows
        self.save()

    def save(self) -> None:
        self.progress.updated_at = time.time()
        self.job.meta["bulk"] = self.progress.to_meta()
        self.job.save_meta()  # type: ignore[no-untyped-call]


def run_bulk(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """The rq job function (``workers.bulk.run_bulk``): run one bulk job, or resume it from
    its checkpoint. The pipeline's Redis is the rq worker's environment's (``REDIS_URL``)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_bulk runs as an rq job (rq worker batchline-bulk)")
    spec = BulkSpec.from_dict(spec_doc)
    settings = Settings.from_env()
    if not settings.redis_url:
        settings = settings.replace(redis_url=_url_of(job))
    keys = Keys(settings.prefix)
    run = BulkRun(job, spec, settings)
    if job.connection.exists(keys.bulk_cancel(job.id)):
        run.progress.state = "cancelled"
        run.save()
        return {"state": "cancelled"}
    try:
        summary = run.run()
    except Exception as exc:
        run.progress.state = "failed"
        run.progress.error = f"{type(exc).__name__}: {exc}"
        run.save()
        raise
    if spec.every_s and not run.cancelled:
        summary["next"] = enqueue(job.connection, spec, delay_s=spec.every_s).id
    return summary


def _url_of(job: RqJob) -> str:
    """A URL for the rq worker's own connection (when REDIS_URL is not set)."""
    kwargs = job.connection.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
