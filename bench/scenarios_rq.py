"""The baseline: what a user would otherwise build with rq, one rq job per request.

The job functions are in :mod:`bench.rq_jobs` (``echo``; ``classify``, the same MLP with the
model built once per worker process), worked by ONE rq worker process, as batchline's side
gets one worker process:

* ``echo-rq`` / ``mlp-rq``: rq's ``SimpleWorker`` (runs jobs in the worker process, the
  faster choice and the one a throughput-minded user would make);
* ``echo-rq-fork`` / ``mlp-rq-fork``: rq's default ``Worker``, which forks a work horse per
  job (what ``rq worker`` runs out of the box), the model built before the work loop so the
  horses inherit it (rq's performance notes).

The client side is generous to rq, so that the worker is what is measured: jobs are enqueued
256 per round trip (``Queue.enqueue_many`` of ``Queue.prepare_data``), at most
``max_in_flight`` outstanding (the same window as ``Client.map``), and results are collected
in order with ``job.latest_result(timeout=...)`` (a blocking read of rq's result stream, no
polling). Latency is measured the same way as for batchline: per item, from just before its
chunk's enqueue to its result being read; idle latency is ``queue.enqueue`` then
``job.latest_result(timeout=...)``, one request at a time. The forking worker is slow, so its
scenarios run fewer items.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rq import Queue
from rq.job import Job
from rq.results import Result as RqResult

from bench.harness import BenchError, Child, Context, watching
from bench.registry import Goal, scenario
from bench.scenarios_queue import cpu_extra
from bench.stats import Latency, Result
from bench.workloads import ECHO, MLP, Workload

CHUNK = 256
WARMUP_ITEMS = 64
IDLE_ITEMS = (200, 50)
IDLE_CAP_S = (6.0, 2.0)
PASS_CAP_S = (60.0, 15.0)
RESULT_TIMEOUT_S = 120
RESULT_TTL_S = 600


def _outcome(job: Job) -> Any:
    result = job.latest_result(timeout=RESULT_TIMEOUT_S)
    if result is None:
        raise BenchError(f"rq job {job.id} had no result within {RESULT_TIMEOUT_S}s")
    if result.type != RqResult.Type.SUCCESSFUL:
        raise BenchError(f"rq job {job.id} failed: {result.exc_string}")
    return result.return_value


def rq_pass(
    queue: Queue,
    func: str,
    inputs: Sequence[Any],
    check: Callable[[Any, Any], bool],
    *,
    namespace: str,
    max_in_flight: int,
    cap_s: float,
) -> tuple[int, float, list[float]]:
    """Windowed enqueue + in-order collection; (items, seconds, per-item latencies in s)."""
    sent = [0.0] * len(inputs)
    latencies: list[float] = []
    window: deque[tuple[int, Job]] = deque()
    started = time.perf_counter()
    stop_at = started + cap_s
    following = 0
    wrong = 0
    while True:
        room = max_in_flight - len(window)
        now = time.perf_counter()
        if following < len(inputs) and now < stop_at and room >= min(CHUNK, max_in_flight) // 2:
            count = min(room, CHUNK, len(inputs) - following)
            indexes = range(following, following + count)
            datas = [
                Queue.prepare_data(
                    func,
                    args=(inputs[i],),
                    job_id=f"{namespace}-{i}",
                    result_ttl=RESULT_TTL_S,
                )
                for i in indexes
            ]
            for i in indexes:
                sent[i] = now
            window.extend(zip(indexes, queue.enqueue_many(datas), strict=True))
            following += count
            continue
        if not window:
            break
        index, job = window.popleft()
        output = _outcome(job)
        latencies.append(time.perf_counter() - sent[index])
        if not check(inputs[index], output):
            wrong += 1
    seconds = time.perf_counter() - started
    if wrong:
        raise BenchError(f"{func}: {wrong} of {len(latencies)} outputs were wrong")
    return len(latencies), seconds, latencies


def rq_idle_pass(
    queue: Queue,
    func: str,
    inputs: Sequence[Any],
    check: Callable[[Any, Any], bool],
    *,
    namespace: str,
    cap_s: float,
) -> list[float]:
    """One request at a time: enqueue, wait for its result. Latencies in s."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + cap_s
    for index, value in enumerate(inputs):
        started = time.perf_counter()
        if started > stop_at:
            break
        job = queue.enqueue(func, value, job_id=f"{namespace}-{index}", result_ttl=RESULT_TTL_S)
        output = _outcome(job)
        latencies.append(time.perf_counter() - started)
        if not check(value, output):
            raise BenchError(f"{func}: wrong output {output!r} for {value!r}")
    return latencies


def start_rq_worker(ctx: Context, namespace: str, *, fork: bool, preload: bool) -> Child:
    argv = [sys.executable, "-m", "bench.rq_worker", namespace, namespace]
    if fork:
        argv.append("--fork")
    if preload:
        argv.append("--preload")
    # The URL goes in the environment, not argv, where ps would show a password.
    return ctx.processes.start(
        f"rq-worker-{namespace}", argv, ctx.env({"REDIS_URL": ctx.redis_url})
    )


def run_rq_scenario(
    ctx: Context,
    name: str,
    workload: Workload,
    func: str,
    *,
    fork: bool,
    counts: tuple[int, int],
) -> Result:
    n = ctx.count(*counts)
    inputs = workload.make(max(n, WARMUP_ITEMS, IDLE_ITEMS[0]))
    namespace = ctx.namespace(name)
    connection = ctx.redis()
    queue = Queue(namespace, connection=connection)
    worker = start_rq_worker(ctx, namespace, fork=fork, preload=fork and workload is MLP)
    try:
        with watching(worker):
            # The first job waits for the worker to start (and, unforked, to build the model).
            _outcome(
                queue.enqueue(func, inputs[0], job_id=f"{namespace}-first", result_ttl=RESULT_TTL_S)
            )
            rq_pass(
                queue,
                func,
                inputs[:WARMUP_ITEMS],
                workload.check,
                namespace=f"{namespace}w",
                max_in_flight=ctx.options.max_in_flight,
                cap_s=ctx.cap_s(*PASS_CAP_S),
            )
            meter = ctx.cpu_meter(worker=worker.pid)
            items, seconds, latencies = rq_pass(
                queue,
                func,
                inputs[:n],
                workload.check,
                namespace=namespace,
                max_in_flight=ctx.options.max_in_flight,
                cap_s=ctx.cap_s(*PASS_CAP_S),
            )
            cpu = meter.read()
            idle = rq_idle_pass(
                queue,
                func,
                inputs[: IDLE_ITEMS[1] if ctx.quick else IDLE_ITEMS[0]],
                workload.check,
                namespace=f"{namespace}i",
                cap_s=ctx.cap_s(*IDLE_CAP_S),
            )
    finally:
        ctx.stop(worker)
        connection.close()
        ctx.forget(namespace)
    return Result(
        name,
        items,
        seconds,
        latency=Latency.of_seconds(
            latencies,
            f"client-side, enqueue -> latest_result(), max_in_flight={ctx.options.max_in_flight}",
        ),
        idle_latency=Latency.of_seconds(idle, "client-side, enqueue -> latest_result(), c=1"),
        extra={
            "worker_class": "rq.Worker (fork per job)" if fork else "rq.SimpleWorker",
            "workers": 1,
            "function": func,
            "max_in_flight": ctx.options.max_in_flight,
            "capped": items < n,
            **cpu_extra(cpu, items),
        },
    )


@scenario("echo-rq", "echo, one rq job per request, one rq SimpleWorker")
def echo_rq(ctx: Context) -> Result:
    return run_rq_scenario(
        ctx, "echo-rq", ECHO, "bench.rq_jobs.echo", fork=False, counts=(5_000, 1_000)
    )


@scenario("mlp-rq", "mlp, one rq job per request, one rq SimpleWorker")
def mlp_rq(ctx: Context) -> Result:
    return run_rq_scenario(
        ctx, "mlp-rq", MLP, "bench.rq_jobs.classify", fork=False, counts=(5_000, 1_000)
    )


@scenario(
    "echo-rq-fork",
    "echo, one rq job per request, one rq default (forking) Worker",
    goals=[Goal("echo-rq")],
)
def echo_rq_fork(ctx: Context) -> Result:
    return run_rq_scenario(
        ctx, "echo-rq-fork", ECHO, "bench.rq_jobs.echo", fork=True, counts=(1_000, 200)
    )


@scenario(
    "mlp-rq-fork",
    "mlp, one rq job per request, one rq default (forking) Worker, model preloaded",
    goals=[Goal("mlp-rq")],
)
def mlp_rq_fork(ctx: Context) -> Result:
    return run_rq_scenario(
        ctx, "mlp-rq-fork", MLP, "bench.rq_jobs.classify", fork=True, counts=(1_000, 200)
    )
