"""``batchline bulk``: run a file through a pipeline as an rq job, and watch, list, cancel.

    batchline bulk run mlp inputs.jsonl -o results.jsonl [--at T | --in 10m | --every 1h]
    batchline bulk status ID [--wait]
    batchline bulk list
    batchline bulk cancel ID

The job runs in an ``rq worker batchline-bulk`` (``--with-scheduler`` for --at/--in/--every),
so the paths are the rq worker's: they are made absolute here, for a worker on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from queueing.bulk import (
    BulkSpec,
    RqConnection,
    cancel,
    document,
    enqueue,
    fetch,
    format_of,
    list_documents,
    parse_at,
    parse_duration,
    rq_connection,
)
from queueing.errors import ConfigError
from queueing.keys import Keys
from queueing.settings import Settings

ENDED = ("done", "failed", "cancelled", "stopped")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(redis_url=getattr(args, "redis_url", None))


def _connection(settings: Settings) -> RqConnection:
    return rq_connection(settings)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        fmt = format_of(args.input, args.format)
        spec = BulkSpec(
            pipeline=args.pipeline,
            input=os.path.abspath(args.input),
            output=os.path.abspath(args.output),
            failures=os.path.abspath(args.failures) if args.failures else "",
            format=fmt,
            column=args.column or "",
            max_in_flight=args.max_in_flight,
            checkpoint_rows=args.checkpoint_rows,
            timeout_s=args.timeout_s,
            every_s=parse_duration(args.every) if args.every else 0.0,
        )
        at = parse_at(args.at) if args.at else None
        delay = parse_duration(args.in_) if args.in_ else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not os.path.exists(spec.input):
        raise ConfigError(f"no such input file: {spec.input}")
    connection = _connection(settings)
    job = enqueue(connection, spec, at=at, delay_s=delay)
    when = f" at {at.isoformat()}" if at else f" in {delay:g}s" if delay else ""
    print(f"{job.id}  queued{when}: {spec.describe()}")
    if args.wait:
        return _follow(connection, job.id)
    return 0


def bar(doc: dict[str, Any], width: int = 30) -> str:
    """``[#####.....]  52%  5,200/10,000 done, 3 failed, 1,850 items/s, ETA 3s  (running)``"""
    total = doc["total"]
    seen = doc["done"] + doc["failed"]
    if total:
        fraction = min(1.0, seen / total)
        filled = round(fraction * width)
        head = (
            f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  {seen:,}/{total:,}"
        )
    else:
        head = f"[{'?' * width}]  {seen:,}/?"
    eta = doc.get("eta_s")
    tail = f", ETA {eta:.0f}s" if eta is not None and doc["state"] == "running" else ""
    return (
        f"{head}  {doc['done']:,} done, {doc['failed']:,} failed, "
        f"{doc['items_per_s']:,.0f} items/s{tail}  ({doc['state']})"
    )


def _follow(connection: RqConnection, bulk_id: str) -> int:
    while True:
        doc = document(fetch(connection, bulk_id))
        end = "\n" if doc["state"] in ENDED else "\r"
        print(bar(doc), end=end, flush=True)
        if doc["state"] in ENDED:
            if doc.get("error"):
                print(f"error: {doc['error']}")
            return 0 if doc["state"] == "done" else 1
        time.sleep(0.5)


def cmd_status(args: argparse.Namespace) -> int:
    connection = _connection(_settings(args))
    if args.wait:
        return _follow(connection, args.id)
    doc = document(fetch(connection, args.id))
    print(f"{doc['id']}  {doc['description']}")
    print(bar(doc))
    if doc.get("error"):
        print(f"error: {doc['error']}")
    print(f"results: {doc['output']}\nfailures: {doc['failures']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    docs = list_documents(_connection(_settings(args)))
    rows = [("id", "state", "pipeline", "done", "failed", "total", "when", "input -> output")]
    for doc in docs:
        total = doc["total"]
        every = f" every {doc['every_s']:g}s" if doc.get("every_s") else ""
        rows.append(
            (
                doc["id"],
                doc["state"],
                doc["pipeline"],
                f"{doc['done']:,}",
                f"{doc['failed']:,}",
                "?" if total is None else f"{total:,}",
                (doc["enqueued_at"] or "")[:19] + every,
                f"{doc['input']} -> {doc['output']}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings(args)
    doc = cancel(_connection(settings), Keys(settings.prefix), args.id)
    print(f"{doc['id']}  cancel requested ({doc['state']})")
    return 0


def register(sub: Any) -> None:
    """Add ``bulk`` and its subcommands to the ``batchline`` parser's subparsers."""
    bulk = sub.add_parser("bulk", help="run a file through a pipeline (an rq job); status, list")
    commands = bulk.add_subparsers(dest="bulk_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--redis-url", help="Redis server (default: REDIS_URL)")

    run = commands.add_parser("run", help="enqueue a bulk job on the batchline-bulk rq queue")
    run.add_argument("pipeline")
    run.add_argument("input", help="JSON Lines, CSV (or Parquet, with pyarrow)")
    run.add_argument("-o", "--output", required=True, help="results, JSON Lines, input order")
    run.add_argument("--failures", help="failed rows (default: OUTPUT.failed.jsonl)")
    run.add_argument("--format", choices=("jsonl", "csv", "parquet"))
    run.add_argument("--column", help="CSV/Parquet: the column holding the input (JSON)")
    run.add_argument("--max-in-flight", type=int, default=1000)
    run.add_argument("--checkpoint-rows", type=int, default=10_000)
    run.add_argument("--timeout-s", type=float, help="each row's deadline from its submit")
    when = run.add_mutually_exclusive_group()
    when.add_argument("--at", help="run at this time (ISO, UTC unless zoned)")
    when.add_argument("--in", dest="in_", metavar="DURATION", help="run in 30s, 10m, 1h...")
    run.add_argument("--every", metavar="DURATION", help="run again this long after each run")
    run.add_argument("--wait", action="store_true", help="draw the progress until it ends")
    common(run)
    run.set_defaults(run=cmd_run)

    status = commands.add_parser("status", help="a bulk job's progress")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="follow it until it ends")
    common(status)
    status.set_defaults(run=cmd_status)

    listing = commands.add_parser("list", help="every bulk job (queued, scheduled, ended)")
    common(listing)
    listing.set_defaults(run=cmd_list)

    stop = commands.add_parser("cancel", help="stop a bulk job; its queued items never run")
    stop.add_argument("id")
    common(stop)
    stop.set_defaults(run=cmd_cancel)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as `batchline bulk ...`")
