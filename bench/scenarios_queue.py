"""batchline through its Python client, and the in-process limit it approaches.

``echo-client`` / ``mlp-client``: one worker process (``python -m batchline worker <pipeline>``,
exactly as deployed) and this process as the client, on one Redis server.

* Throughput: ``Client.map(pipeline, inputs, max_in_flight=1024)`` (``--max-in-flight``): the
  client keeps that many jobs queued, submitting in chunks of 256 per round trip, and collects
  results in input order. items/s = items / (first submit .. last result).
* Latency (``p50``/``p99``), under that load: per item, from the moment ``map`` takes it from
  the input iterator (just before its chunk's submit round trip) to the moment ``map`` yields
  its result to the caller. This is what a user of ``map`` sees, head-of-line waiting included;
  at saturation it is about ``max_in_flight / throughput`` (Little's law), so it measures the
  window as much as the server.
* Idle latency (``c1``): a separate closed loop at concurrency 1, ``client.submit(...)`` then
  ``job.result()``, one request at a time: the floor a lone request pays (including the
  stage's ``batch_wait_timeout_s``, since a batch of one waits that long for company).
* Server-side latency (JSON only): ``finished_at - created_at`` from the job records
  (:class:`~queueing.jobs.JobRecord`; created by the client's clock at submit, finished by the
  worker's at hand-off; same machine), for every job of the throughput run. The records'
  stage timings also give the batch sizes the worker formed, which ``mlp-inprocess`` replays.

``mlp-inprocess``: the same model (the ``mlp`` stage, set up as the worker sets it up, run under
``torch.inference_mode`` as the worker runs it) called in this process on the SAME sequence of
batch sizes the worker formed in ``mlp-client`` (full batches of 256 when ``mlp-client`` did not
run), each batch paying the same payload work as in the worker: ``orjson`` loads of every item's
JSON bytes, the batch handler, ``orjson`` dumps of every output. No Redis, no processes: the
limit batchline approaches. Latency = the batch's time (every item of a batch waits for all).

``mlp-forward``: only ``model(x)`` on those batch sizes, the input tensors built beforehand.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bench.harness import BenchError, Context, watching
from bench.registry import Derived, Goal, scenario
from bench.stats import Latency, Result, histogram
from bench.workloads import ECHO, MLP, Workload
from queueing.client import Client
from queueing.jobs import JobRecord
from queueing.keys import Keys
from queueing.message import dumps, loads
from queueing.settings import Settings

WARMUP_ITEMS = 512
IDLE_ITEMS = (300, 100)
"""Closed-loop requests (full, --quick)."""
IDLE_CAP_S = (6.0, 2.0)
PASS_CAP_S = (90.0, 20.0)
"""A throughput pass stops submitting after this long and reports what it finished."""
RECORDS_CHUNK = 2000


def client_map_pass(
    client: Client,
    pipeline: str,
    inputs: Sequence[Any],
    check: Callable[[Any, Any], bool],
    *,
    max_in_flight: int,
    cap_s: float,
) -> tuple[int, float, list[float]]:
    """Run ``inputs`` through ``client.map``; (items done, seconds, per-item latencies in s).
    BenchError if any output is wrong."""
    sent = [0.0] * len(inputs)
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + cap_s

    def feed() -> Iterator[Any]:
        for index, value in enumerate(inputs):
            now = time.perf_counter()
            if now > stop_at:
                return
            sent[index] = now
            yield value

    wrong = 0
    for index, output in enumerate(client.map(pipeline, feed(), max_in_flight=max_in_flight)):
        latencies.append(time.perf_counter() - sent[index])
        if not check(inputs[index], output):
            wrong += 1
    seconds = time.perf_counter() - started
    if wrong:
        raise BenchError(f"{pipeline}: {wrong} of {len(latencies)} outputs were wrong")
    return len(latencies), seconds, latencies


def client_idle_pass(
    client: Client,
    pipeline: str,
    inputs: Sequence[Any],
    check: Callable[[Any, Any], bool],
    *,
    cap_s: float,
) -> tuple[list[float], list[str]]:
    """One request at a time: submit, wait for its result. (latencies in s, job ids)."""
    latencies: list[float] = []
    ids: list[str] = []
    stop_at = time.perf_counter() + cap_s
    for value in inputs:
        started = time.perf_counter()
        if started > stop_at:
            break
        job = client.submit(pipeline, value)
        output = job.result(timeout=60)
        latencies.append(time.perf_counter() - started)
        ids.append(job.id)
        if not check(value, output):
            raise BenchError(f"{pipeline}: wrong output {output!r} for {value!r}")
    return latencies, ids


def job_records(client: Client, job_ids: Sequence[str] | None = None) -> list[JobRecord]:
    """The records of the given jobs, or of every job under the client's prefix."""
    keys = Keys(client.core.settings.prefix)
    if job_ids is None:
        pattern = f"{client.core.settings.prefix}:*:job:*"
        names = [key.decode() for key in client.redis.scan_iter(match=pattern, count=1000)]
        job_ids = [name.rsplit(":", 1)[1] for name in names]
    records: list[JobRecord] = []
    for start in range(0, len(job_ids), RECORDS_CHUNK):
        chunk = job_ids[start : start + RECORDS_CHUNK]
        pipe = client.redis.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hgetall(keys.job(job_id))
        for job_id, raw in zip(chunk, pipe.execute(), strict=True):
            if raw:
                records.append(JobRecord.from_hash(job_id, raw))
    return records


def server_latency(records: Sequence[JobRecord], method: str) -> Latency | None:
    return Latency.of_seconds(
        (r.finished_at - r.created_at for r in records if r.finished_at is not None), method
    )


def batches(records: Sequence[JobRecord]) -> dict[str, list[tuple[int, float]]]:
    """Per stage, the batches that ran these jobs as (size, handler seconds), in the order
    they ran (the jobs of one batch share its start time)."""
    seen: dict[str, set[tuple[float, int, float]]] = {}
    for record in records:
        for t in record.timings:
            seen.setdefault(t.stage, set()).add((t.started_at, t.batch_size, t.compute_s))
    return {
        stage: [(size, compute) for _, size, compute in sorted(found)]
        for stage, found in seen.items()
    }


def run_client_scenario(
    ctx: Context,
    name: str,
    workload: Workload,
    full: int,
    *,
    quick: int | None = None,
    workers: Sequence[Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """The shared body of the ``*-client`` scenarios (see the module doc). ``full`` / ``quick``
    items (default ``full // 10``); ``workers``: the targets of each worker process (default
    one process for the whole pipeline); ``env``: more of the workers' environment."""
    n = ctx.count(full, full // 10 if quick is None else quick)
    inputs = workload.make(max(n, WARMUP_ITEMS, IDLE_ITEMS[0]))
    namespace = ctx.namespace(name)
    settings = ctx.settings(namespace)
    groups = [list(targets) for targets in workers or [[workload.pipeline]]]
    children = ctx.start_batchline_workers(settings, groups, env)
    pids = (
        {"worker": children[0].pid}
        if len(children) == 1
        else {f"worker:{'+'.join(g)}": c.pid for g, c in zip(groups, children, strict=True)}
    )
    try:
        with watching(*children), Client(settings) as client:
            list(client.map(workload.pipeline, inputs[:WARMUP_ITEMS], max_in_flight=256))
            wall_start = time.time()
            meter = ctx.cpu_meter(**pids)
            items, seconds, latencies = client_map_pass(
                client,
                workload.pipeline,
                inputs[:n],
                workload.check,
                max_in_flight=ctx.options.max_in_flight,
                cap_s=ctx.cap_s(*PASS_CAP_S),
            )
            wall_end = time.time()
            cpu = meter.read()
            idle, idle_ids = client_idle_pass(
                client,
                workload.pipeline,
                inputs[: IDLE_ITEMS[1] if ctx.quick else IDLE_ITEMS[0]],
                workload.check,
                cap_s=ctx.cap_s(*IDLE_CAP_S),
            )
            loaded = [r for r in job_records(client) if wall_start <= r.created_at <= wall_end]
            idle_records = job_records(client, idle_ids)
            stage_specs = client.pipeline(workload.pipeline).stages
    finally:
        for child in children:
            ctx.stop(child)
        ctx.forget(namespace)
    ran = batches(loaded)
    sizes = {stage: [size for size, _ in found] for stage, found in ran.items()}
    for stage, seen in sizes.items():
        ctx.shared[f"batch_sizes:{stage}"] = seen
    return Result(
        name,
        items,
        seconds,
        latency=Latency.of_seconds(
            latencies,
            f"client-side, submit -> result yielded by Client.map, "
            f"max_in_flight={ctx.options.max_in_flight}",
        ),
        idle_latency=Latency.of_seconds(idle, "client-side, submit -> job.result(), concurrency 1"),
        extra={
            "pipeline": workload.pipeline,
            "stages": [s.name for s in stage_specs],
            "stage_batching": {
                s.name: {
                    "max_batch_size": s.max_batch_size,
                    "batch_wait_timeout_s": s.batch_wait_timeout_s,
                }
                for s in stage_specs
            },
            "workers": len(children),
            "worker_stages": [c.announced.get("stages") for c in children],
            "max_in_flight": ctx.options.max_in_flight,
            "device": children[0].announced.get("device", settings.device),
            "torch_threads": ctx.options.torch_threads or "default",
            **cpu_extra(cpu, items),
            "server_latency": _dict(
                server_latency(loaded, "job record finished_at - created_at, throughput run")
            ),
            "idle_server_latency": _dict(
                server_latency(idle_records, "job record finished_at - created_at, concurrency 1")
            ),
            "batch_size_histogram": {stage: histogram(s) for stage, s in sizes.items()},
            "batches": {stage: len(s) for stage, s in sizes.items()},
            "mean_batch_size": {
                stage: (sum(s) / len(s) if s else None) for stage, s in sizes.items()
            },
            "handler_ms_per_batch": {
                stage: _dict(Latency.of_seconds([c for _, c in found], "StageTiming.compute_s"))
                for stage, found in ran.items()
            },
            "handler_busy_share": {
                stage: sum(c for _, c in found) / seconds for stage, found in ran.items()
            },
        },
    )


def cpu_extra(cpu: dict[str, float], items: int) -> dict[str, Any]:
    """CPU seconds per process during the throughput pass, and microseconds per item (with
    several workers, ``workers`` is their sum)."""
    several = [s for name, s in cpu.items() if name.startswith("worker:")]
    if several:
        cpu = {**cpu, "workers": round(sum(several), 3)}
    return {
        "cpu_s": cpu,
        "cpu_us_per_item": {name: round(s / max(items, 1) * 1e6, 1) for name, s in cpu.items()},
    }


def cpu_per_item(name: str, process: str, label: str, at_most: float | None = None) -> Derived:
    """A derived figure: CPU microseconds per item of one metered process of ``name`` (None
    when it was not metered, e.g. Redis given with --redis-url)."""
    return Derived(
        label,
        (name,),
        lambda r: r[name].extra.get("cpu_us_per_item", {}).get(process),
        unit="µs",
        at_most=at_most,
        formula=f"CPU seconds of {process} (its process tree) during the throughput pass / items",
    )


def c1_p50(name: str, label: str, at_most: float | None = None) -> Derived:
    """A derived figure: ``name``'s c1 p50 in ms."""

    def compute(results: Mapping[str, Result]) -> float | None:
        idle = results[name].idle_latency
        return idle.p50 if idle else None

    return Derived(label, (name,), compute, unit="ms", at_most=at_most, formula=f"c1 p50({name})")


def _dict(latency: Latency | None) -> dict[str, Any] | None:
    return latency.to_dict() if latency else None


@scenario(
    "echo-client",
    "echo via Client.map, one batchline worker process",
    goals=[Goal("queue-floor", 0.75), Goal("echo-rq", 10.0), Goal("echo-rq-fork", 10.0)],
    derived=[
        c1_p50("echo-client", "c1 p50 (echo's batch wait 0)", at_most=0.6),
        cpu_per_item("echo-client", "redis", "Redis CPU per item", at_most=25),
    ],
)
def echo_client(ctx: Context) -> Result:
    return run_client_scenario(ctx, "echo-client", ECHO, 50_000)


@scenario(
    "mlp-client",
    "16-feature torch MLP via Client.map, one batchline worker process",
    goals=[
        Goal("mlp-inprocess", 0.85),
        Goal("mlp-rq", 10.0),
        Goal("mlp-rq-fork", 10.0),
        Goal("echo-client"),
    ],
)
def mlp_client(ctx: Context) -> Result:
    return run_client_scenario(ctx, "mlp-client", MLP, 50_000)


# -- the in-process limit -------------------------------------------------------------------

MLP_STAGE = "mlp.classify"
INPROCESS_MIN_S = (3.0, 0.75)
"""In-process passes repeat the batch sequence until at least this long has passed."""


def _mlp_stage(settings: Settings) -> tuple[Any, str]:
    """The ``mlp`` stage's handler, loaded the way a worker loads it, and its device."""
    from pipelines.examples.mlp import mlp
    from workers.device import resolve_device

    stage = mlp.compile().stages[MLP_STAGE]
    device = resolve_device(settings.device)
    return stage.load(device), device


def _replayed_sizes(ctx: Context, n: int) -> tuple[list[int], str]:
    seen: list[int] | None = ctx.shared.get(f"batch_sizes:{MLP_STAGE}")
    if seen:
        return list(seen), "replayed from mlp-client's job records"
    size = 256
    return [size] * (n // size) + ([n % size] if n % size else []), "mlp-client did not run: 256"


def _repeat(
    ctx: Context, sizes: Sequence[int], one_batch: Callable[[int, int], float]
) -> tuple[int, float, list[tuple[float, int]], float]:
    """Run ``one_batch(start, size)`` over ``sizes`` (repeated until the minimum time has
    passed); (items, seconds, (batch seconds, batch size) per batch, and items/s at the
    median per-item cost, which a busy machine's stalls do not move)."""
    items, seconds = 0, 0.0
    timed: list[tuple[float, int]] = []
    minimum = ctx.cap_s(*INPROCESS_MIN_S)
    while seconds < minimum:
        start = 0
        for size in sizes:
            took = one_batch(start, size)
            seconds += took
            items += size
            timed.append((took, size))
            start += size
    costs = sorted(took / size for took, size in timed)
    return items, seconds, timed, 1 / costs[len(costs) // 2]


@contextlib.contextmanager
def _inference_mode() -> Iterator[None]:
    import torch

    with torch.inference_mode():
        yield


@scenario(
    "mlp-inprocess",
    "the mlp handler in this process, same batch sizes, orjson decode/encode per item",
    goals=[Goal("mlp-forward")],
)
def mlp_inprocess(ctx: Context) -> Result:
    threads = ctx.apply_torch_threads()
    handler, device = _mlp_stage(ctx.settings("unused"))
    sizes, origin = _replayed_sizes(ctx, ctx.count(50_000, 5_000))
    payloads = [dumps(value) for value in MLP.make(sum(sizes))]

    def one_batch(start: int, size: int) -> float:
        began = time.perf_counter()
        values = [loads(data) for data in payloads[start : start + size]]
        outputs = handler.call_batch_sync(values)
        encoded = [dumps(output) for output in outputs]
        took = time.perf_counter() - began
        assert len(encoded) == size
        return took

    with _inference_mode():
        for _ in range(20):  # warm-up
            one_batch(0, sizes[0])
        items, seconds, timed, robust = _repeat(ctx, sizes, one_batch)
        idle = [one_batch(i, 1) for i in range(200)]
    return inprocess_result(
        "mlp-inprocess", items, seconds, timed, idle, device, origin, sizes, threads, robust
    )


def inprocess_result(
    name: str,
    items: int,
    seconds: float,
    timed: Any,
    idle: Sequence[float],
    device: str,
    origin: Any,
    sizes: Sequence[int],
    threads: Any,
    robust: float,
    **extra: Any,
) -> Result:
    """The Result of an in-process scenario replaying a worker's batch sizes."""
    return Result(
        name,
        items,
        seconds,
        latency=Latency.of_weighted_seconds(timed, "its batch's decode + handler + encode time"),
        idle_latency=Latency.of_seconds(idle, "a batch of one"),
        extra={
            "device": device,
            "batch_sizes": origin,
            "batches_per_pass": len(sizes),
            "mean_batch_size": sum(sizes) / len(sizes),
            "torch_threads": threads,
            "items_per_s_at_median_batch_cost": robust,
            **extra,
        },
    )


@scenario("mlp-forward", "the mlp model's forward pass alone, same batch sizes, tensors ready")
def mlp_forward(ctx: Context) -> Result:
    from workers.adapters.torch import stack

    threads = ctx.apply_torch_threads()
    handler, device = _mlp_stage(ctx.settings("unused"))
    model = handler.instance.model
    sizes, origin = _replayed_sizes(ctx, ctx.count(50_000, 5_000))
    inputs = MLP.make(sum(sizes))
    tensors: dict[int, Any] = {}
    start = 0
    for size in sizes:
        tensors[start] = stack(inputs[start : start + size], device)
        start += size
    tensors[-1] = stack(inputs[:1], device)  # for the batches of one
    sync = _synchronizer(device)

    def forward(x: Any) -> float:
        began = time.perf_counter()
        model(x)
        sync()
        return time.perf_counter() - began

    with _inference_mode():
        for _ in range(20):
            forward(tensors[0])
        items, seconds, timed, robust = _repeat(
            ctx, sizes, lambda start, _: forward(tensors[start])
        )
        idle = [forward(tensors[-1]) for _ in range(200)]
    return Result(
        "mlp-forward",
        items,
        seconds,
        latency=Latency.of_weighted_seconds(timed, "its batch's forward time"),
        idle_latency=Latency.of_seconds(idle, "a batch of one"),
        extra={
            "device": device,
            "batch_sizes": origin,
            "torch_threads": threads,
            "items_per_s_at_median_batch_cost": robust,
        },
    )


def _synchronizer(device: str) -> Callable[[], None]:
    """Waits for queued GPU work (so a forward pass is timed, not just launched)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None
