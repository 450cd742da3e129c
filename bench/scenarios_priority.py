"""Priority lanes (issue 11): one worker saturated by a low-priority backlog.

``prio``: a model whose batches of 32 take 20 ms (``bench.batching_pipelines.prio``); one
worker; a low-lane backlog of 10,000 jobs queued before it starts. Then, while it drains:

1. *probes*: high-lane jobs, one every 50 ms (an open loop): their latency (job record
   ``finished_at - created_at``) against the measured batch time, the interval between the
   starts of consecutive batches on the worker (target: p50 <= 2 batch times); and the low
   lane's items/s meanwhile (it must go on);
2. *flood*: 2,000 high jobs at once, while low ones still wait: the low lane's share of the
   items run while both lanes wait, against its weight bound (1 / (8 + 1) with the default
   lane weights 8/4/1).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence

from bench.harness import BenchError, Context, watching
from bench.registry import Derived, scenario
from bench.stats import Latency, Result
from queueing.client import Client
from queueing.jobs import JobRecord
from queueing.lanes import DEFAULT_WEIGHTS, RANK

PIPELINES = {"BATCHLINE_PIPELINES": "bench.batching_pipelines"}
BACKLOG = (10_000, 10_000)
PROBES = (100, 40)
PROBE_EVERY_S = 0.05
FLOOD = (2000, 1000)
LOW_BOUND = DEFAULT_WEIGHTS[RANK["low"]] / (
    DEFAULT_WEIGHTS[RANK["high"]] + DEFAULT_WEIGHTS[RANK["low"]]
)
"""The low lane's least share of a batch's slots while the high lane floods (default weights)."""


def _records(client: Client, job_ids: Sequence[str]) -> list[JobRecord]:
    pipe = client.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(client.core.keys.job(job_id))
    return [JobRecord.from_hash(i, raw) for i, raw in zip(job_ids, pipe.execute(), strict=True)]


def _wait_all(client: Client, job_ids: Sequence[str], timeout: float) -> list[JobRecord]:
    limit = time.monotonic() + timeout
    while True:
        records = _records(client, job_ids)
        if all(r.finished_at is not None for r in records):
            return records
        if time.monotonic() > limit:
            done = sum(r.finished_at is not None for r in records)
            raise BenchError(f"prio: {done} of {len(job_ids)} jobs ended in {timeout:g}s")
        time.sleep(0.05)


def _done_between(records: Sequence[JobRecord], start: float, end: float) -> int:
    return sum(1 for r in records if r.finished_at is not None and start <= r.finished_at < end)


@scenario(
    "prio",
    "one worker, 10,000 low-lane jobs queued: high-lane jobs' latency vs the batch time, and "
    "the low lane's progress (probes, then a high flood)",
    derived=[
        Derived(
            "prio high p50 / batch time",
            ("prio",),
            lambda r: r["prio"].extra.get("high_p50_over_batch"),
            at_most=2.0,
            formula="p50 of high-lane probes' finished_at - created_at / median interval "
            "between batch starts",
        ),
        Derived(
            "prio low items/s during the probes",
            ("prio",),
            lambda r: r["prio"].extra.get("low_per_s_during_probes"),
            at_least=1.0,
            formula="low-lane jobs ended while the probes ran / the probes' time",
        ),
        Derived(
            "prio low share under a high flood / weight bound",
            ("prio",),
            lambda r: r["prio"].extra.get("low_share_over_bound"),
            at_least=0.9,
            formula="low jobs / all jobs ended while both lanes waited, over 1/(8+1)",
        ),
    ],
)
def prio(ctx: Context) -> Result:
    namespace = ctx.namespace("prio")
    settings = ctx.settings(namespace)
    backlog = BACKLOG[1] if ctx.quick else BACKLOG[0]
    n_probes = ctx.count(PROBES[0], PROBES[1])
    n_flood = ctx.count(FLOOD[0], FLOOD[1])
    with Client(settings) as client:
        # Registered by a first worker start; the backlog is queued while none runs.
        [worker] = ctx.start_batchline_workers(settings, [["prio"]], PIPELINES)
        ctx.stop(worker)
        low: list[str] = []
        for start in range(0, backlog, 1000):
            chunk = [{"x": i} for i in range(start, min(backlog, start + 1000))]
            low += [job.id for job in client.submit_many("prio", chunk, priority="low")]
        [worker] = ctx.start_batchline_workers(settings, [["prio"]], PIPELINES)
        try:
            with watching(worker):
                time.sleep(0.5)  # saturated: batches of 32 back to back
                probes: list[str] = []
                probes_from = time.time()
                for i in range(n_probes):
                    due = probes_from + i * PROBE_EVERY_S
                    time.sleep(max(0.0, due - time.time()))
                    probes.append(client.submit("prio", {"probe": i}, priority="high").id)
                probe_records = _wait_all(client, probes, 60)
                probes_to = max(r.finished_at or 0.0 for r in probe_records)
                flood_from = time.time()
                chunk = [{"flood": i} for i in range(n_flood)]
                flood = [j.id for j in client.submit_many("prio", chunk, priority="high")]
                flood_records = _wait_all(client, flood, 120)
                flood_to = max(r.finished_at or 0.0 for r in flood_records)
                low_records = _wait_all(client, low, 300)
        finally:
            ctx.stop(worker)
            ctx.forget(namespace)
    if _done_between(low_records, flood_to, float("inf")) == 0:
        raise BenchError("prio: the low backlog ran out before the high flood ended")
    every = [*low_records, *probe_records, *flood_records]
    starts = sorted({t.started_at for r in every for t in r.timings})
    gaps = [b - a for a, b in itertools.pairwise(starts) if b - a < 1.0]
    batch_s = statistics.median(gaps)
    compute_s = statistics.median(t.compute_s for r in low_records for t in r.timings)
    latency = Latency.of_seconds(
        ((r.finished_at or 0.0) - r.created_at for r in probe_records),
        "high-lane probes: job record finished_at - created_at, one every 50 ms",
    )
    assert latency is not None
    low_in_probes = _done_between(low_records, probes_from, probes_to)
    low_in_flood = _done_between(low_records, flood_from, flood_to)
    high_in_flood = _done_between(flood_records, flood_from, flood_to)
    share = low_in_flood / max(1, low_in_flood + high_in_flood)
    first = min(r.created_at for r in low_records)
    last = max(r.finished_at or 0.0 for r in every)
    return Result(
        "prio",
        len(low_records) + len(probe_records) + len(flood_records),
        last - first,
        latency=latency,
        extra={
            "backlog": backlog,
            "probes": n_probes,
            "flood": n_flood,
            "batch_s": batch_s,
            "compute_s": compute_s,
            "high_p50_ms": latency.p50,
            "high_p99_ms": latency.p99,
            "high_p50_over_batch": latency.p50 / 1000 / batch_s,
            "high_p99_over_batch": latency.p99 / 1000 / batch_s,
            "low_per_s_during_probes": low_in_probes / max(1e-9, probes_to - probes_from),
            "low_in_flood": low_in_flood,
            "high_in_flood": high_in_flood,
            "low_share_in_flood": share,
            "low_share_bound": LOW_BOUND,
            "low_share_over_bound": share / LOW_BOUND,
            "low_per_s_in_flood": low_in_flood / max(1e-9, flood_to - flood_from),
        },
    )
