"""Streaming scenarios (issue 11): static streaming batches vs continuous batching (refilling
the places of items that are done) on a length-skewed workload, with the same token model
(``bench.streaming_pipelines``: 8 sequences at a time, ``STEP_S`` per step).

The workload: a burst of jobs submitted at once (``submit_many``), 90% of 8 tokens and 10% of
64. Each row: items/s (jobs / from the first job's creation to the last one's end), job latency
(the record's finished_at - created_at), and time to first chunk (the first chunk entry's
stream id, in ms, - created_at). ``stream-refill``'s goal: at least 1.2x the static row's
items/s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from bench.harness import BenchError, Context, watching
from bench.registry import Derived, Goal, scenario
from bench.stats import Latency, Result
from bench.streaming_pipelines import MAX_RUNNING, STEP_S
from queueing.client import Client
from queueing.jobs import JobRecord

PIPELINES = {"BATCHLINE_PIPELINES": "bench.streaming_pipelines"}
JOBS = (400, 120)
"""Jobs in the burst (full, --quick)."""
SHORT, LONG = 8, 64
LONG_SHARE = 0.1


def _workload(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"prompt": f"prompt {i}", "max_tokens": LONG if rng.random() < LONG_SHARE else SHORT}
        for i in range(n)
    ]


def _records(client: Client, job_ids: Sequence[str]) -> tuple[list[JobRecord], list[float]]:
    """The jobs' records and the unix time of each one's first chunk."""
    pipe = client.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(client.core.keys.job(job_id))
        pipe.xrange(client.core.keys.chunks(job_id), count=1)
    replies = pipe.execute()
    records, first_chunks = [], []
    for index, job_id in enumerate(job_ids):
        raw, first = replies[2 * index], replies[2 * index + 1]
        records.append(JobRecord.from_hash(job_id, raw))
        entry_id = first[0][0].decode()
        first_chunks.append(int(entry_id.split("-")[0]) / 1000)
    return records, first_chunks


def _burst(ctx: Context, name: str, pipeline: str) -> Result:
    inputs = _workload(ctx.count(*JOBS))
    namespace = ctx.namespace(name)
    settings = ctx.settings(namespace)
    [worker] = ctx.start_batchline_workers(settings, [[pipeline]], PIPELINES)
    try:
        with watching(worker), Client(settings) as client:
            warm = [{"prompt": "warm up", "max_tokens": 2}] * MAX_RUNNING
            for job in client.submit_many(pipeline, warm):
                job.result(timeout=60)
            jobs = client.submit_many(pipeline, inputs)
            for job in jobs:
                job.result(timeout=300)
            ids = [job.id for job in jobs]
            records, first_chunks = _records(client, ids)
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)
    if any(r.finished_at is None for r in records):
        raise BenchError(f"{pipeline}: not every job finished")
    begun = min(r.created_at for r in records)
    ended = max(r.finished_at or 0.0 for r in records)
    method = "job record finished_at - created_at, one burst"
    long = [r.result is not None and len(r.result) == LONG for r in records]
    return Result(
        name,
        len(records),
        ended - begun,
        latency=Latency.of_seconds(
            ((r.finished_at or 0.0) - r.created_at for r in records), method
        ),
        extra={
            "workload": f"{len(inputs)} jobs at once, {LONG_SHARE:.0%} of {LONG} tokens, "
            f"the rest {SHORT}",
            "step_s": STEP_S,
            "max_running": MAX_RUNNING,
            "tokens": sum(len(r.result or ()) for r in records),
            "time_to_first_chunk": _dict(
                Latency.of_seconds(
                    (chunk - r.created_at for r, chunk in zip(records, first_chunks, strict=True)),
                    "first chunk entry's stream id (ms) - job created_at",
                )
            ),
            "short_latency": _dict(
                Latency.of_seconds(
                    (
                        (r.finished_at or 0.0) - r.created_at
                        for r, x in zip(records, long, strict=True)
                        if not x
                    ),
                    method + ", short items",
                )
            ),
            "long_latency": _dict(
                Latency.of_seconds(
                    (
                        (r.finished_at or 0.0) - r.created_at
                        for r, x in zip(records, long, strict=True)
                        if x
                    ),
                    method + ", long items",
                )
            ),
        },
    )


def _dict(latency: Latency | None) -> dict[str, Any] | None:
    return latency.to_dict() if latency else None


def _ratio(results: Any, figure: str, key: str) -> float | None:
    refill = results["stream-refill"].extra[figure]
    static = results["stream-static"].extra[figure]
    return refill[key] / static[key] if refill and static else None


@scenario(
    "stream-static",
    "toy token model streamed in static batches of 8, 10% of jobs 8x longer, one burst",
)
def stream_static(ctx: Context) -> Result:
    return _burst(ctx, "stream-static", "gen_static")


@scenario(
    "stream-refill",
    "the same, continuous batching: a done item's place is refilled at the next step",
    goals=[Goal("stream-static", 1.2)],
    derived=[
        Derived(
            "stream p99 latency refill / static",
            ("stream-refill", "stream-static"),
            lambda r: r["stream-refill"].latency.p99 / r["stream-static"].latency.p99,
            at_most=1.0,
            formula="job latency p99 (finished_at - created_at), same burst",
        ),
        Derived(
            "stream p50 latency refill / static",
            ("stream-refill", "stream-static"),
            lambda r: r["stream-refill"].latency.p50 / r["stream-static"].latency.p50,
            at_most=1.0,
        ),
        Derived(
            "stream p50 time to first chunk refill / static",
            ("stream-refill", "stream-static"),
            lambda r: _ratio(r, "time_to_first_chunk", "p50_ms"),
            at_most=1.0,
        ),
        Derived(
            "stream p99 time to first chunk refill / static",
            ("stream-refill", "stream-static"),
            lambda r: _ratio(r, "time_to_first_chunk", "p99_ms"),
        ),
    ],
)
def stream_refill(ctx: Context) -> Result:
    return _burst(ctx, "stream-refill", "gen_refill")
