"""``queue-floor``: the least any Redis-streams queue must do per item, in plain redis-py on the
same server, payload, batch size and client window as ``echo-client`` (no Lua, no guarantees:
no job records, no idempotency, no fencing, no deadlines, no timings). ``echo-client`` must
reach a share of it in the same run (its goal).

* The consumer is a separate process, as batchline's worker is (:mod:`bench.floor_worker`):
  ``XREADGROUP`` of up to the echo stage's ``max_batch_size`` entries, JSON decode and encode
  of each payload, then one pipeline per batch: ``RPUSH`` of the results to the client's list,
  ``XACK`` + ``XDEL`` of the batch.
* The client (this process) keeps ``max_in_flight`` items outstanding (``--max-in-flight``,
  as ``Client.map``): it refills when at least half a batch is free, with one pipeline of
  ``XADD`` per chunk (up to ``max_batch_size`` items, each ``{"i": index, "r": its result
  list, "d": the JSON payload}``), and reads results in batches (``BLMPOP ... LEFT COUNT
  max_in_flight``: whatever is there, one round trip), decoding and checking each one.
* Latency under load: per item, from its chunk's ``XADD`` to the read that brought its result
  (results are taken as they come, not in input order as ``Client.map`` yields them).
* Idle latency (``c1``): ``XADD`` of one item, then ``BLMPOP`` of its result, one at a time.

BLMPOP needs Redis >= 7.0 (or valkey).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from bench.harness import READY_TIMEOUT_S, BenchError, Child, Context, watching
from bench.registry import scenario
from bench.scenarios_queue import (
    IDLE_CAP_S,
    IDLE_ITEMS,
    PASS_CAP_S,
    WARMUP_ITEMS,
    cpu_extra,
)
from bench.stats import Latency, Result
from bench.workloads import ECHO, Workload

RESULT_WAIT_S = 30
"""Longest the client waits for the next result (a dead consumer is caught sooner)."""


def echo_batch_size() -> int:
    """The echo stage's ``max_batch_size``, from the example's definition."""
    from pipelines.examples.echo import echo

    return echo.compile().spec.stages[0].max_batch_size


class FloorClient:
    """The client side: submits to ``stream``, reads its results from its own list."""

    def __init__(self, client: redis.Redis, stream: str, results: str, workload: Workload) -> None:
        self.redis = client
        self.stream = stream
        self.results = results
        self.workload = workload

    def submit(self, inputs: Sequence[Any], start: int, stop: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for index in range(start, stop):
            pipe.xadd(
                self.stream, {"i": index, "r": self.results, "d": orjson.dumps(inputs[index])}
            )
        pipe.execute()

    def collect(self, inputs: Sequence[Any], most: int) -> list[int]:
        """The indexes of the results read in one round trip (waiting for the first); a wrong
        result is a BenchError."""
        reply: Any = self.redis.blmpop(RESULT_WAIT_S, 1, self.results, direction="LEFT", count=most)
        if not reply:
            raise BenchError(f"queue-floor: no result in {RESULT_WAIT_S}s")
        indexes = []
        for raw in reply[1]:
            head, _, data = raw.partition(b" ")
            index = int(head)
            if not self.workload.check(inputs[index], orjson.loads(data)):
                raise BenchError(f"queue-floor: wrong output {data!r} for item {index}")
            indexes.append(index)
        return indexes

    def map_pass(
        self, inputs: Sequence[Any], *, window: int, chunk: int, cap_s: float
    ) -> tuple[int, float, list[float]]:
        """Every input through the queue, ``window`` outstanding; (items done, seconds,
        per-item latencies in s)."""
        sent = [0.0] * len(inputs)
        latencies: list[float] = []
        refill_at = max(1, min(chunk, window) // 2)
        submitted = outstanding = 0
        started = time.perf_counter()
        stop_at = started + cap_s
        while True:
            room = window - outstanding
            now = time.perf_counter()
            if submitted < len(inputs) and room >= refill_at and now < stop_at:
                stop = min(len(inputs), submitted + min(room, chunk))
                sent[submitted:stop] = [now] * (stop - submitted)
                self.submit(inputs, submitted, stop)
                outstanding += stop - submitted
                submitted = stop
                continue
            if not outstanding:
                break
            indexes = self.collect(inputs, window)
            now = time.perf_counter()
            latencies += [now - sent[index] for index in indexes]
            outstanding -= len(indexes)
        return len(latencies), time.perf_counter() - started, latencies

    def idle_pass(self, inputs: Sequence[Any], cap_s: float) -> list[float]:
        """One item at a time; latencies in s."""
        latencies: list[float] = []
        stop_at = time.perf_counter() + cap_s
        for index in range(len(inputs)):
            started = time.perf_counter()
            if started > stop_at:
                break
            self.submit(inputs, index, index + 1)
            self.collect(inputs, 1)
            latencies.append(time.perf_counter() - started)
        return latencies


def start_floor_worker(ctx: Context, stream: str, group: str, count: int, ready: str) -> Child:
    """:mod:`bench.floor_worker` on the run's server, returned once it has connected."""
    child = ctx.processes.start(
        "floor-worker",
        [
            *(sys.executable, "-m", "bench.floor_worker", "--redis-url", ctx.redis_url),
            *("--stream", stream, "--group", group, "--count", str(count), "--ready", ready),
        ],
        ctx.env(),
    )
    client = ctx.redis()
    limit = time.monotonic() + READY_TIMEOUT_S
    try:
        while client.get(ready) != str(child.pid).encode():
            if not child.alive():
                raise BenchError(
                    f"floor-worker exited with {child.process.returncode} at start:\n"
                    f"{child.log_tail()}"
                )
            if time.monotonic() > limit:
                raise BenchError(f"floor-worker was not ready in {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
    except BaseException:
        ctx.stop(child)
        raise
    finally:
        client.close()
    return child


@scenario(
    "queue-floor",
    "plain redis-py streams queue (XADD / XREADGROUP / RPUSH+XACK+XDEL), echo payload, "
    "one consumer process",
)
def queue_floor(ctx: Context) -> Result:
    n = ctx.count(50_000, 5_000)
    inputs = ECHO.make(max(n, WARMUP_ITEMS, IDLE_ITEMS[0]))
    batch = echo_batch_size()
    window = ctx.options.max_in_flight
    namespace = ctx.namespace("queue-floor")
    stream, group = f"{namespace}:floor:stream", "floor"
    client = ctx.redis()
    client.xgroup_create(stream, group, id="0", mkstream=True)
    child = start_floor_worker(ctx, stream, group, batch, f"{namespace}:floor:ready")
    floor = FloorClient(client, stream, f"{namespace}:floor:results", ECHO)
    try:
        with watching(child):
            floor.map_pass(inputs[:WARMUP_ITEMS], window=256, chunk=batch, cap_s=60)
            meter = ctx.cpu_meter(worker=child.pid)
            items, seconds, latencies = floor.map_pass(
                inputs[:n], window=window, chunk=batch, cap_s=ctx.cap_s(*PASS_CAP_S)
            )
            cpu = meter.read()
            idle = floor.idle_pass(
                inputs[: IDLE_ITEMS[1] if ctx.quick else IDLE_ITEMS[0]], ctx.cap_s(*IDLE_CAP_S)
            )
    finally:
        ctx.stop(child)
        client.close()
        ctx.forget(namespace)
    return Result(
        "queue-floor",
        items,
        seconds,
        latency=Latency.of_seconds(
            latencies, f"client-side, XADD -> result read, max_in_flight={window}"
        ),
        idle_latency=Latency.of_seconds(idle, "client-side, XADD -> BLMPOP, concurrency 1"),
        extra={
            "payload": "the echo-client inputs, orjson-encoded",
            "max_batch_size": batch,
            "max_in_flight": window,
            **cpu_extra(cpu, items),
        },
    )
