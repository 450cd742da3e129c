"""Bulk inference of a file: ``batchline bulk`` (an rq job in a plain ``rq worker``) against
``Client.map`` over the same file, through ``mlp``, one batchline worker process.

* ``mlp-bulk-map``: this process reads the JSON Lines file, runs every row through
  ``Client.map`` and writes ``{"row", "result"}`` lines in order: what a bulk job does, minus
  rq, checkpoints and progress.
* ``mlp-bulk``: the same file as a bulk job (``queueing.bulk.enqueue``), timed from enqueue to
  the job's end as rq reports it; goal >= 0.9x ``mlp-bulk-map``. The rq worker's peak memory
  (VmHWM of the worker and of the work horse it forks, sampled from /proc) is measured for a
  small file first, then for the full one: the window is bounded, so the two should be close.

    python -m bench mlp-bulk-map mlp-bulk          # 100,000 rows (--quick: 10,000)
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import BenchError, Context
from bench.registry import Derived, Goal, scenario
from bench.stats import Result
from bench.workloads import MLP
from queueing.bulk import BulkSpec, Progress, enqueue, rq_connection
from queueing.client import Client

FULL_ROWS, QUICK_ROWS = 100_000, 10_000
SMALL_ROWS = 2_000
"""The first, small bulk job: the worker's memory for a small file."""


def _write_inputs(ctx: Context, rows: int) -> Path:
    """The mlp inputs as JSON Lines in the scratch folder (made once per size)."""
    path = ctx.workdir / f"bulk-mlp-{rows}.jsonl"
    if not path.exists():
        values = MLP.make(rows)
        with open(path, "wb") as f:
            for value in values:
                f.write(orjson.dumps(value) + b"\n")
    return path


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            todo += [
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
    return pids


class PeakMemory:
    """Samples the peak RSS (VmHWM) of a process and its children every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid in _tree(self.pid):
                self.peaks[pid] = max(self.peaks.get(pid, 0), _vm(pid, "VmHWM"))

    def mib(self, pid: int | None = None) -> float:
        """The worker's own peak (``pid``), or the largest of its children's."""
        if pid is not None:
            return round(self.peaks.get(pid, 0) / 1024, 1)
        children = [kib for p, kib in self.peaks.items() if p != self.pid]
        return round(max(children, default=0) / 1024, 1)


@scenario(
    "mlp-bulk-map",
    "mlp rows of a JSON Lines file via Client.map, results written in order (bulk's reference)",
)
def mlp_bulk_map(ctx: Context) -> Result:
    rows = ctx.count(FULL_ROWS, QUICK_ROWS)
    source = _write_inputs(ctx, rows)
    namespace = ctx.namespace("mlp-bulk-map")
    settings = ctx.settings(namespace)
    worker = ctx.start_batchline_worker(settings, ["mlp"])
    out = ctx.workdir / "bulk-map-out.jsonl"
    try:
        with Client(settings) as client:
            list(client.map("mlp", MLP.make(256), max_in_flight=256))  # warm-up
            started = time.perf_counter()
            with open(source, "rb") as f, open(out, "wb") as sink:
                inputs = (orjson.loads(line) for line in f)
                done = 0
                for done, value in enumerate(
                    client.map("mlp", inputs, max_in_flight=ctx.options.max_in_flight), 1
                ):
                    sink.write(orjson.dumps({"row": done - 1, "result": value}) + b"\n")
            seconds = time.perf_counter() - started
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)
    if done != rows:
        raise BenchError(f"mlp-bulk-map: {done} results for {rows} rows")
    return Result("mlp-bulk-map", rows, seconds, extra={"max_in_flight": ctx.options.max_in_flight})


def _bulk_once(ctx: Context, settings: Any, source: Path, rows: int, pid: int) -> float:
    """Run one bulk job to its end; its seconds (from enqueue)."""
    connection = rq_connection(settings)
    out = ctx.workdir / f"bulk-out-{rows}.jsonl"
    spec = BulkSpec(
        pipeline="mlp",
        input=str(source),
        output=str(out),
        max_in_flight=ctx.options.max_in_flight,
    )
    started = time.perf_counter()
    job = enqueue(connection, spec)
    limit = started + ctx.cap_s(900, 180)
    while True:
        status = job.get_status(refresh=True)
        if status is not None and status.value in ("finished", "failed", "stopped", "canceled"):
            break
        if time.perf_counter() > limit:
            raise BenchError(f"mlp-bulk: the job of {rows} rows did not end in time")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    progress = Progress.from_meta(job.get_meta(refresh=True))
    if status.value != "finished" or progress.done != rows:
        raise BenchError(
            f"mlp-bulk: the job ended {status.value} with {progress.done} of {rows} rows done "
            f"({progress.error or job.exc_info})"
        )
    connection.close()
    return seconds


@scenario(
    "mlp-bulk",
    "the same file as a bulk job (rq worker batchline-bulk, plain forking rq worker)",
    goals=[Goal("mlp-bulk-map", 0.9)],
    derived=[
        Derived(
            "rq work horse peak RSS, full file",
            ("mlp-bulk",),
            lambda r: r["mlp-bulk"].extra["work_horse_peak_rss_mib"],
            unit="MiB",
            formula="max VmHWM of the rq worker's children, sampled every 50 ms",
        ),
        Derived(
            f"rq work horse peak RSS, {SMALL_ROWS:,} rows",
            ("mlp-bulk",),
            lambda r: r["mlp-bulk"].extra[f"work_horse_peak_rss_mib_{SMALL_ROWS}_rows"],
            unit="MiB",
            formula="the same, for the small file run first",
        ),
    ],
)
def mlp_bulk(ctx: Context) -> Result:
    rows = ctx.count(FULL_ROWS, QUICK_ROWS)
    source = _write_inputs(ctx, rows)
    small = _write_inputs(ctx, SMALL_ROWS)
    namespace = ctx.namespace("mlp-bulk")
    settings = ctx.settings(namespace)
    worker = ctx.start_batchline_worker(settings, ["mlp"])
    env = ctx.env({"REDIS_URL": ctx.redis_url, "BATCHLINE_PREFIX": namespace})
    argv = [sys.executable, "-m", "rq.cli", "worker", "batchline-bulk", "--url", ctx.redis_url]
    rq_worker = ctx.processes.start("rq-bulk", argv, env)
    try:
        with PeakMemory(rq_worker.pid) as small_peak:
            _bulk_once(ctx, settings, small, SMALL_ROWS, rq_worker.pid)
        with PeakMemory(rq_worker.pid) as peak:
            seconds = _bulk_once(ctx, settings, source, rows, rq_worker.pid)
    finally:
        ctx.stop(rq_worker)
        ctx.stop(worker)
        ctx.forget(namespace)
    return Result(
        "mlp-bulk",
        rows,
        seconds,
        extra={
            "max_in_flight": ctx.options.max_in_flight,
            "rq_worker_peak_rss_mib": peak.mib(rq_worker.pid),
            "work_horse_peak_rss_mib": peak.mib(),
            f"work_horse_peak_rss_mib_{SMALL_ROWS}_rows": small_peak.mib(),
            "rows": rows,
            "timed": "enqueue -> rq job finished (rq pick-up, row count, checkpoints included)",
        },
    )
