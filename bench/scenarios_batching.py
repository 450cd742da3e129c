"""Batching scenarios (issue 11): batches bounded by cost vs by count, and the adaptive wait vs
fixed waits. Their models sleep for what a batch costs (``bench.batching_pipelines``).

- ``tokens-count`` / ``tokens-cost``: the same open-loop load (a fixed rate of jobs, 95% of
  8-64 tokens and 5% of 512-1024) on a padded token model, batched by count (32 items) or by
  padded cost (4096 padded tokens). Latency is the job record's finished_at - created_at.
- ``wait-0``, ``wait-2ms``, ``wait-5ms``, ``wait-10ms``, ``wait-auto``: a 2 ms + 0.05 ms/item
  model; each row's idle latency is concurrency 1 (closed loop) and its throughput is
  concurrency 64 (``Client.map``, 64 in flight). The wait is set live (``batchline config``'s
  route) on a running worker. ``wait-auto`` also measures a step of load (C=1 -> C=64 -> C=1)
  and how long the batches take to follow it.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.harness import BenchError, Context, watching
from bench.registry import Derived, scenario
from bench.stats import Latency, Result, histogram
from queueing.client import Client
from queueing.connection import connect_async
from queueing.jobs import JobRecord
from queueing.live_config import set_settings
from queueing.settings import Settings

PIPELINES = {"BATCHLINE_PIPELINES": "bench.batching_pipelines"}
TOKENS_RATE = (500.0, 300.0)
"""Jobs per second offered to both token pipelines (full, --quick)."""
TOKENS_SECONDS = (12.0, 4.0)
LONG_SHARE = 0.05
WAITS: dict[str, float | str] = {
    "wait-0": 0.0,
    "wait-2ms": 0.002,
    "wait-5ms": 0.005,
    "wait-10ms": 0.010,
    "wait-auto": "auto",
}
IDLE_REQUESTS = (300, 100)
LOADED_ITEMS = (6000, 1500)
IN_FLIGHT = 64
STEP_S = (3.0, 1.5)
"""Each phase of the step-change run (C=1, C=64, C=1)."""
WINDOW_S = 0.25


def _token_inputs(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        long = rng.random() < LONG_SHARE
        length = rng.randint(512, 1024) if long else rng.randint(8, 64)
        inputs.append({"tokens": [1] * length})
    return inputs


def _records(client: Client, job_ids: Sequence[str]) -> list[JobRecord]:
    records = []
    for start in range(0, len(job_ids), 2000):
        chunk = job_ids[start : start + 2000]
        pipe = client.redis.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hgetall(client.core.keys.job(job_id))
        for job_id, raw in zip(chunk, pipe.execute(), strict=True):
            if raw:
                records.append(JobRecord.from_hash(job_id, raw))
    return records


def _batch_sizes(records: Sequence[JobRecord]) -> list[tuple[float, int]]:
    """(started_at, size) of each batch that ran these jobs, in order."""
    seen = {(t.started_at, t.batch_size) for r in records for t in r.timings}
    return sorted(seen)


def _open_loop(client: Client, pipeline: str, inputs: Sequence[Any], rate: float) -> list[str]:
    """Submit ``inputs`` at ``rate`` per second, whatever the results (an open loop)."""
    ids = []
    started = time.perf_counter()
    for index, value in enumerate(inputs):
        due = started + index / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        ids.append(client.submit(pipeline, value).id)
    return ids


def _tokens(ctx: Context, name: str, pipeline: str) -> Result:
    rate = TOKENS_RATE[1] if ctx.quick else TOKENS_RATE[0]
    seconds = TOKENS_SECONDS[1] if ctx.quick else TOKENS_SECONDS[0]
    inputs = _token_inputs(ctx.count(int(rate * seconds), int(rate * seconds)))
    namespace = ctx.namespace(name)
    settings = ctx.settings(namespace)
    [worker] = ctx.start_batchline_workers(settings, [[pipeline]], PIPELINES)
    try:
        with watching(worker), Client(settings) as client:
            list(client.map(pipeline, inputs[:200], max_in_flight=64))  # warm up
            ids = _open_loop(client, pipeline, inputs, rate)
            for job_id in ids:
                client.job(job_id).result(timeout=120)
            records = _records(client, ids)
            spec = client.pipeline(pipeline).stages[0]
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)
    done = [r for r in records if r.finished_at is not None]
    if len(done) != len(inputs):
        raise BenchError(f"{pipeline}: {len(done)} of {len(inputs)} jobs finished")
    first = min(r.created_at for r in done)
    last = max(r.finished_at or 0.0 for r in done)
    long_ids = {
        job_id for job_id, value in zip(ids, inputs, strict=True) if len(value["tokens"]) >= 512
    }
    sizes = [size for _, size in _batch_sizes(done)]
    method = "job record finished_at - created_at, open loop"
    return Result(
        name,
        len(done),
        last - first,
        latency=Latency.of_seconds(((r.finished_at or 0.0) - r.created_at for r in done), method),
        extra={
            "offered_per_s": rate,
            "long_share": LONG_SHARE,
            "max_batch_size": spec.max_batch_size,
            "batch_size_fn": spec.batch_size_fn,
            "short_latency": _dict(
                Latency.of_seconds(
                    ((r.finished_at or 0.0) - r.created_at for r in done if r.id not in long_ids),
                    method + ", short items only",
                )
            ),
            "long_latency": _dict(
                Latency.of_seconds(
                    ((r.finished_at or 0.0) - r.created_at for r in done if r.id in long_ids),
                    method + ", long items only",
                )
            ),
            "batches": len(sizes),
            "batch_size_histogram": histogram(sizes),
        },
    )


def _paired_tokens(ctx: Context, blocks: int, block_s: float) -> dict[str, Any]:
    """Both token pipelines served by one worker process, loaded in alternating blocks of
    ``block_s`` at the same open-loop rate: each sees the same machine (the noise of a shared
    machine cancels out). p50/p99 over all blocks of each."""
    rate = TOKENS_RATE[1] if ctx.quick else TOKENS_RATE[0]
    namespace = ctx.namespace("tokens-paired")
    settings = ctx.settings(namespace)
    inputs = _token_inputs(int(rate * block_s), seed=11)
    ids: dict[str, list[str]] = {"tokens_count": [], "tokens_cost": []}
    [worker] = ctx.start_batchline_workers(settings, [["tokens_count", "tokens_cost"]], PIPELINES)
    try:
        with watching(worker), Client(settings) as client:
            for pipeline in ids:
                list(client.map(pipeline, inputs[:200], max_in_flight=64))  # warm up
            for block in range(blocks):
                for pipeline in list(ids)[block % 2 :] + list(ids)[: block % 2]:
                    ids[pipeline] += _open_loop(client, pipeline, inputs, rate)
                    time.sleep(0.5)  # let the backlog drain between blocks
            for job_id in [job_id for job_ids in ids.values() for job_id in job_ids]:
                client.job(job_id).result(timeout=120)
            found = {pipeline: _records(client, job_ids) for pipeline, job_ids in ids.items()}
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)
    out: dict[str, Any] = {"paired_blocks": blocks, "paired_block_s": block_s}
    for pipeline, records in found.items():
        latency = Latency.of_seconds(
            ((r.finished_at or 0.0) - r.created_at for r in records if r.finished_at),
            "job record finished_at - created_at, open loop, alternating blocks",
        )
        out[f"paired_{pipeline}"] = _dict(latency)
    count, cost = out["paired_tokens_count"], out["paired_tokens_cost"]
    if count and cost:
        out["paired_p99_cost_over_count"] = cost["p99_ms"] / count["p99_ms"]
        out["paired_p50_cost_over_count"] = cost["p50_ms"] / count["p50_ms"]
    return out


def _dict(latency: Latency | None) -> dict[str, Any] | None:
    return latency.to_dict() if latency else None


def _p99_ratio(results: Any) -> float | None:
    cost, count = results["tokens-cost"].latency, results["tokens-count"].latency
    return cost.p99 / count.p99 if cost and count else None


@scenario(
    "tokens-count",
    "padded token model, 5% long items, open loop; batches of 32 items (the baseline)",
)
def tokens_count(ctx: Context) -> Result:
    return _tokens(ctx, "tokens-count", "tokens_count")


@scenario(
    "tokens-cost",
    "the same load; batches bounded by padded tokens (batch_size_fn, 4096)",
    derived=[
        Derived(
            "tokens p99 cost / count (paired blocks, one worker)",
            ("tokens-cost",),
            lambda r: r["tokens-cost"].extra.get("paired_p99_cost_over_count"),
            at_most=1.0,
            formula="p99 over alternating open-loop blocks of the two pipelines, one worker",
        ),
        Derived(
            "tokens p50 cost / count (paired blocks, one worker)",
            ("tokens-cost",),
            lambda r: r["tokens-cost"].extra.get("paired_p50_cost_over_count"),
        ),
        Derived(
            "tokens p99 cost-bounded / count-bounded (separate runs)",
            ("tokens-cost", "tokens-count"),
            _p99_ratio,
            at_most=1.0,
            formula="tokens-cost latency p99 / tokens-count latency p99, same offered load",
        ),
        Derived(
            "tokens items/s cost-bounded / count-bounded",
            ("tokens-cost", "tokens-count"),
            lambda r: r["tokens-cost"].items_per_s / r["tokens-count"].items_per_s,
            at_least=0.95,
            formula="achieved items/s ratio (both offered the same rate)",
        ),
    ],
)
def tokens_cost(ctx: Context) -> Result:
    result = _tokens(ctx, "tokens-cost", "tokens_cost")
    result.extra.update(_paired_tokens(ctx, 2 if ctx.quick else 4, 2.0 if ctx.quick else 3.0))
    return result


# -- adaptive wait -------------------------------------------------------------------------------


def _set_wait(settings: Settings, wait: float | str) -> None:
    async def go() -> None:
        client = connect_async(settings)
        try:
            await set_settings(client, settings, "fixedcost.model", {"batch_wait_timeout_s": wait})
        finally:
            await client.aclose()

    asyncio.run(go())


def _idle(client: Client, n: int, ids: list[str] | None = None) -> list[float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        job = client.submit("fixedcost", {"x": i})
        job.result(timeout=60)
        latencies.append(time.perf_counter() - started)
        if ids is not None:
            ids.append(job.id)
    return latencies


def _loaded(client: Client, n: int) -> tuple[int, float, list[float]]:
    sent: list[float] = [0.0] * n
    latencies = []

    def feed() -> Any:
        for i in range(n):
            sent[i] = time.perf_counter()
            yield {"x": i}

    started = time.perf_counter()
    for i, _ in enumerate(client.map("fixedcost", feed(), max_in_flight=IN_FLIGHT)):
        latencies.append(time.perf_counter() - sent[i])
    return n, time.perf_counter() - started, latencies


def _step(client: Client, phase_s: float) -> dict[str, Any]:
    """C=1 for ``phase_s``, then C=64, then C=1 again: how soon the batches follow."""
    ids_before: list[str] = []
    until = time.perf_counter() + phase_s
    while time.perf_counter() < until:
        job = client.submit("fixedcost", {"x": 0})
        job.result(timeout=60)
        ids_before.append(job.id)
    step_up = time.time()
    until = time.perf_counter() + phase_s

    def feed() -> Any:
        while time.perf_counter() < until:
            yield {"x": 1}

    for _ in client.map("fixedcost", feed(), max_in_flight=IN_FLIGHT):
        pass
    step_down = time.time()
    after: list[tuple[float, float]] = []
    until = time.perf_counter() + phase_s
    while time.perf_counter() < until:
        started = time.perf_counter()
        client.submit("fixedcost", {"x": 2}).result(timeout=60)
        after.append((time.time(), time.perf_counter() - started))
    records = [
        r for r in _records(client, _all_ids(client)) if step_up <= r.created_at <= step_down
    ]
    batches = [(t, n) for t, n in _batch_sizes(records) if t >= step_up]
    steady = [n for t, n in batches if t >= step_up + phase_s / 2]
    steady_mean = statistics.fmean(steady) if steady else float("nan")
    up_s = None
    t = step_up
    while t < step_down:
        window = [n for s, n in batches if t <= s < t + WINDOW_S]
        if window and statistics.fmean(window) >= 0.9 * steady_mean:
            up_s = t - step_up
            break
        t += WINDOW_S
    idle_p50 = statistics.median(latency for _, latency in after[len(after) // 2 :])
    down_s = None
    t = step_down
    while t < step_down + phase_s:
        window = [lat for s, lat in after if t <= s < t + WINDOW_S]
        if window and statistics.median(window) <= idle_p50 + 0.0003:
            down_s = t - step_down
            break
        t += WINDOW_S
    return {
        "phase_s": phase_s,
        "steady_mean_batch_size_c64": steady_mean,
        "seconds_to_90pct_of_steady_batch_size_after_step_up": up_s,
        "seconds_to_c1_p50_within_0.3ms_after_step_down": down_s,
        "window_s": WINDOW_S,
        "c1_requests_before_step": len(ids_before),
    }


def _paired_c1(client: Client, settings: Settings, blocks: int, per_block: int) -> dict[str, Any]:
    """C=1 latency with wait 0 and with "auto" in alternating blocks on the same worker (set
    live), so that both see the same machine: the noise of a shared machine cancels out."""
    samples: dict[str, list[float]] = {"0": [], "auto": []}
    ids: dict[str, list[str]] = {"0": [], "auto": []}
    for block in range(blocks):
        # ABBA: neither setting always goes first (an order effect would pass for its own).
        order: tuple[float | str, ...] = (0.0, "auto") if block % 2 == 0 else ("auto", 0.0)
        for wait in order:
            _set_wait(settings, wait)
            time.sleep(0.7)  # applied within 0.5 s
            key = "auto" if wait == "auto" else "0"
            samples[key] += _idle(client, per_block, ids[key])
    p50 = {key: statistics.median(values) * 1000 for key, values in samples.items()}
    # The worker's side: from entry to batch start (the read, any wait, the start script),
    # without the client's and the hand-off's noise.
    waited = {
        key: statistics.median(t.queue_wait_s for r in _records(client, job_ids) for t in r.timings)
        * 1000
        for key, job_ids in ids.items()
    }
    return {
        "paired_c1_p50_ms": p50,
        "paired_c1_p50_auto_minus_wait0_ms": p50["auto"] - p50["0"],
        "paired_c1_queue_wait_p50_ms": waited,
        "paired_c1_queue_wait_auto_minus_wait0_ms": waited["auto"] - waited["0"],
        "paired_c1_requests_each": blocks * per_block,
    }


def _paired_c64(client: Client, settings: Settings, rounds: int, items: int) -> dict[str, Any]:
    """C=64 items/s of every wait in turn, for ``rounds`` rounds, on the same worker (set
    live): each setting sees the same machine; the median round of each is reported."""
    rates: dict[str, list[float]] = {name: [] for name in WAITS}
    for round_ in range(rounds):
        names = list(WAITS)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            _set_wait(settings, WAITS[name])
            time.sleep(0.7)
            done, seconds, _ = _loaded(client, items)
            rates[name].append(done / seconds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    best = max(value for name, value in medians.items() if name != "wait-auto")
    return {
        "paired_c64_items_per_s": medians,
        "paired_c64_rounds": rounds,
        "paired_c64_auto_over_best_fixed": medians["wait-auto"] / best,
    }


def _all_ids(client: Client) -> list[str]:
    pattern = f"{client.core.settings.prefix}:*:job:*"
    return [
        key.decode().rsplit(":", 1)[1] for key in client.redis.scan_iter(match=pattern, count=1000)
    ]


def _wait_scenario(ctx: Context, name: str) -> Result:
    wait = WAITS[name]
    namespace = ctx.namespace(name)
    settings = ctx.settings(namespace)
    [worker] = ctx.start_batchline_workers(settings, [["fixedcost"]], PIPELINES)
    try:
        with watching(worker), Client(settings) as client:
            _set_wait(settings, wait)
            time.sleep(1.0)  # workers read live settings every 0.5 s
            list(client.map("fixedcost", [{"x": i} for i in range(500)], max_in_flight=IN_FLIGHT))
            idle = _idle(client, IDLE_REQUESTS[1] if ctx.quick else IDLE_REQUESTS[0])
            items, seconds, latencies = _loaded(client, ctx.count(LOADED_ITEMS[0], LOADED_ITEMS[1]))
            step: dict[str, Any] = {}
            if wait == "auto":
                step = _step(client, STEP_S[1] if ctx.quick else STEP_S[0])
                step |= _paired_c1(client, settings, 3 if ctx.quick else 6, 40)
                step |= _paired_c64(client, settings, 1 if ctx.quick else 3, 1500)
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)
    return Result(
        name,
        items,
        seconds,
        latency=Latency.of_seconds(latencies, f"client-side, Client.map, {IN_FLIGHT} in flight"),
        idle_latency=Latency.of_seconds(idle, "client-side, submit -> result, concurrency 1"),
        extra={"batch_wait_timeout_s": wait, "model": "2 ms + 0.05 ms/item (sleep)", **step},
    )


def _best_fixed(results: Any) -> float:
    return max(results[n].items_per_s for n in WAITS if n != "wait-auto" and n in results)


for _name in WAITS:
    _derived = []
    if _name == "wait-auto":
        _derived = [
            Derived(
                "auto C=1 p50 - wait-0 C=1 p50 (separate workers)",
                ("wait-auto", "wait-0"),
                lambda r: (
                    r["wait-auto"].idle_latency.p50 - r["wait-0"].idle_latency.p50
                    if r["wait-auto"].idle_latency and r["wait-0"].idle_latency
                    else None
                ),
                unit="ms",
            ),
            Derived(
                "auto C=1 p50 - wait 0 C=1 p50 (paired blocks, one worker)",
                ("wait-auto",),
                lambda r: r["wait-auto"].extra.get("paired_c1_p50_auto_minus_wait0_ms"),
                unit="ms",
                at_most=0.3,
                formula="median C=1 latency, blocks of 40 alternating wait 0 / auto set live",
            ),
            Derived(
                "auto C=1 queue-wait p50 - wait 0's (paired blocks, job timings)",
                ("wait-auto",),
                lambda r: r["wait-auto"].extra.get("paired_c1_queue_wait_auto_minus_wait0_ms"),
                unit="ms",
                at_most=0.3,
                formula="median StageTiming.queue_wait_s (entry -> batch start) of the same blocks",
            ),
            Derived(
                "auto C=64 items/s / best fixed wait's (paired rounds, one worker)",
                ("wait-auto",),
                lambda r: r["wait-auto"].extra.get("paired_c64_auto_over_best_fixed"),
                at_least=0.95,
                formula="median of rounds; each round runs every wait in turn, set live",
            ),
            Derived(
                "auto C=64 items/s / best fixed wait's (separate workers)",
                ("wait-auto", "wait-0", "wait-2ms", "wait-5ms", "wait-10ms"),
                lambda r: r["wait-auto"].items_per_s / _best_fixed(r),
                at_least=0.95,
            ),
            Derived(
                "auto: step C=1->64, s to 90% of steady batch size",
                ("wait-auto",),
                lambda r: r["wait-auto"].extra.get(
                    "seconds_to_90pct_of_steady_batch_size_after_step_up"
                ),
                unit="s",
                at_most=1.0,
            ),
            Derived(
                "auto: step C=64->1, s to C=1 p50 (+0.3 ms)",
                ("wait-auto",),
                lambda r: r["wait-auto"].extra.get(
                    "seconds_to_c1_p50_within_0.3ms_after_step_down"
                ),
                unit="s",
                at_most=1.0,
            ),
        ]
    scenario(
        _name,
        f"2 ms + 0.05 ms/item model, batch_wait_timeout_s={WAITS[_name]!r} (set live): "
        "C=1 p50 and C=64 items/s",
        derived=_derived,
    )(lambda ctx, _n=_name: _wait_scenario(ctx, _n))
