"""Composed pipelines: what a chain's added stages cost, and a fan-out ensemble against the
same work done by hand in one process.

``echo-chain3``: :data:`bench.pipelines.echo3`, three pass-through stages each batched as the
``echo`` example, with ONE worker process per stage (``python -m batchline worker echo3.a``,
``... echo3.b``, ``... echo3.c``), measured exactly as ``echo-client`` (see
:mod:`bench.scenarios_queue`: a ``Client.map`` throughput pass, then a closed loop at
concurrency 1). Against ``echo-client`` in the same run (one stage, one worker) it gives the
cost of each of the two added stages (derived figures, printed after the goals):

* ``c1 p50 ms per added stage = (c1_p50(echo-chain3) - c1_p50(echo-client)) / 2``, goal <= 1 ms
  (the p99 likewise, reported without a goal);
* ``items/s ratio per added stage = (items/s(echo-chain3) / items/s(echo-client)) ** (1/2)``,
  goal >= 0.85 (each added stage costs at most 15% of the throughput).

``ensemble-client``: the ``ensemble`` example (a ``split`` stage the DSL inserts, a fan-out to
two torch MLPs ``model_a`` / ``model_b``, a join ``average``) via ``Client.map``, with ONE
worker process per stage (four). Measured as ``echo-client``; its job records give the batch
sizes each stage formed, which ``ensemble-inprocess`` replays.

``ensemble-inprocess``: ``model_a``, ``model_b`` and ``average`` (loaded as a worker loads them,
run under ``torch.inference_mode``) called by hand in this process, each on the SAME sequence
of batch sizes its stage formed in ``ensemble-client`` (batches of 256 when it did not run),
trimmed to the same item count, each batch paying the payload work its stage pays in a worker:
``orjson`` loads of every input (the models: the 16 floats; ``average``: the joined
``{"model_a": logits, "model_b": logits}``), the handler, ``orjson`` dumps of every output,
with torch's threads set as a worker sets them (``workers.device.torch_threads``: half the
cores by default; ``--torch-threads`` wins), and restored afterwards.
Not counted: the ``split`` stage (a pass-through that exists only because the pipeline starts
with a fan-out) and anything Redis or processes do. items/s = items / the sum of every batch's
time; latency per item = the sum of its three batches' times. The JSON adds the same with
one decode of the input and one encode of the result only (no serialisation between stages).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.harness import BenchError, Context
from bench.registry import Derived, Goal, scenario
from bench.scenarios_queue import INPROCESS_MIN_S, run_client_scenario
from bench.stats import Latency, Result
from bench.workloads import ECHO3, ENSEMBLE
from queueing.message import dumps, loads

BENCH_PIPELINES = {"BATCHLINE_PIPELINES": "pipelines.examples,bench.pipelines"}
"""Workers of ``echo-chain3`` load the bench's own pipelines besides the examples."""

CHAIN_ADDED_STAGES = 2


def _idle_p50(result: Result) -> float | None:
    return result.idle_latency.p50 if result.idle_latency else None


def _idle_p99(result: Result) -> float | None:
    return result.idle_latency.p99 if result.idle_latency else None


Figure = Callable[[Mapping[str, Result]], float | None]


def _ms_per_added_stage(
    this: str, reference: str, added: int, pick: Callable[[Result], float | None]
) -> Figure:
    """``(pick(this) - pick(reference)) / added``: milliseconds each added stage costs."""

    def compute(results: Mapping[str, Result]) -> float | None:
        mine, theirs = pick(results[this]), pick(results[reference])
        if mine is None or theirs is None:
            return None
        return float((mine - theirs) / added)

    return compute


def _ratio_per_added_stage(this: str, reference: str, added: int) -> Figure:
    """``(items/s(this) / items/s(reference)) ** (1 / added)``: each added stage's share."""

    def compute(results: Mapping[str, Result]) -> float | None:
        mine, theirs = results[this].items_per_s, results[reference].items_per_s
        if not theirs > 0 or not mine >= 0:
            return None
        return float((mine / theirs) ** (1 / added))

    return compute


@scenario(
    "echo-chain3",
    "echo3 (three pass-through stages) via Client.map, one worker process per stage",
    goals=[Goal("echo-client")],
    derived=[
        Derived(
            "c1 p50 ms per added stage",
            ("echo-chain3", "echo-client"),
            _ms_per_added_stage("echo-chain3", "echo-client", CHAIN_ADDED_STAGES, _idle_p50),
            unit="ms",
            at_most=1.0,
            formula="(c1 p50(echo-chain3) - c1 p50(echo-client)) / 2",
        ),
        Derived(
            "c1 p99 ms per added stage",
            ("echo-chain3", "echo-client"),
            _ms_per_added_stage("echo-chain3", "echo-client", CHAIN_ADDED_STAGES, _idle_p99),
            unit="ms",
            formula="(c1 p99(echo-chain3) - c1 p99(echo-client)) / 2",
        ),
        Derived(
            "items/s ratio per added stage",
            ("echo-chain3", "echo-client"),
            _ratio_per_added_stage("echo-chain3", "echo-client", CHAIN_ADDED_STAGES),
            at_least=0.85,
            formula="(items/s(echo-chain3) / items/s(echo-client)) ** (1/2)",
        ),
    ],
)
def echo_chain3(ctx: Context) -> Result:
    return run_client_scenario(
        ctx,
        "echo-chain3",
        ECHO3,
        50_000,
        quick=5_000,
        workers=[[stage] for stage in ("echo3.a", "echo3.b", "echo3.c")],
        env=BENCH_PIPELINES,
    )


# -- the ensemble -------------------------------------------------------------------------------

ENSEMBLE_SPLIT = "ensemble.split"
ENSEMBLE_MODELS = ("ensemble.model_a", "ensemble.model_b")
ENSEMBLE_JOIN = "ensemble.average"
ENSEMBLE_STAGES = (*ENSEMBLE_MODELS, ENSEMBLE_JOIN)
"""The stages ``ensemble-inprocess`` runs by hand (not ``split``, a pass-through)."""
ENSEMBLE_ITEMS = (30_000, 3_000)


@scenario(
    "ensemble-client",
    "ensemble (split, model_a | model_b, average) via Client.map, one worker process per stage",
    goals=[Goal("ensemble-inprocess", 0.80), Goal("mlp-client")],
)
def ensemble_client(ctx: Context) -> Result:
    return run_client_scenario(
        ctx,
        "ensemble-client",
        ENSEMBLE,
        ENSEMBLE_ITEMS[0],
        quick=ENSEMBLE_ITEMS[1],
        workers=[[stage] for stage in (ENSEMBLE_SPLIT, *ENSEMBLE_STAGES)],
    )


def _plans(ctx: Context, n: int) -> tuple[dict[str, list[int]], str]:
    """Per stage, the batch sizes to replay, all trimmed to the same item count."""
    seen = {name: list(ctx.shared.get(f"batch_sizes:{name}") or []) for name in ENSEMBLE_STAGES}
    if all(seen.values()):
        origin = "replayed from ensemble-client's job records"
    else:
        seen = {name: [256] * (n // 256) + ([n % 256] if n % 256 else []) for name in seen}
        origin = "ensemble-client did not run: 256"
    total = min(sum(sizes) for sizes in seen.values())
    plans: dict[str, list[int]] = {}
    for name, sizes in seen.items():
        plan, left = [], total
        for size in sizes:
            if left <= 0:
                break
            plan.append(min(size, left))
            left -= plan[-1]
        plans[name] = plan
    return plans, origin


@dataclasses.dataclass
class _Stage:
    """One stage run by hand: its handler, what its stream would hold, and what it cost."""

    handler: Any
    payloads: list[bytes]
    decode_s: float = 0.0
    handler_s: float = 0.0
    encode_s: float = 0.0
    items: int = 0
    per_item: list[float] = dataclasses.field(default_factory=list)
    """Every batch's seconds per item (for the median)."""

    @property
    def seconds(self) -> float:
        return self.decode_s + self.handler_s + self.encode_s


@scenario(
    "ensemble-inprocess",
    "the ensemble's two models and average in this process, same batch sizes, orjson per stage",
)
def ensemble_inprocess(ctx: Context) -> Result:
    import torch

    from pipelines.examples.ensemble import ensemble
    from workers.device import limit_torch_threads, resolve_device, torch_threads

    settings = ctx.settings("unused")
    device = resolve_device(settings.device)
    previous = torch.get_num_threads()
    # As a worker configures torch (its default: half the cores), or --torch-threads.
    threads = torch_threads(ctx.options.torch_threads or settings.torch_threads)
    limit_torch_threads(threads)
    topology = ensemble.compile()
    plans, origin = _plans(ctx, ctx.count(*ENSEMBLE_ITEMS))
    n = sum(plans[ENSEMBLE_JOIN])
    inputs = ENSEMBLE.make(n)
    loop = asyncio.new_event_loop()

    def call(handler: Any, values: list[Any]) -> list[Any]:
        if handler.is_async:
            outputs: list[Any] = loop.run_until_complete(handler.call_batch(values))
            return outputs
        return list(handler.call_batch_sync(values))

    try:
        with torch.inference_mode():
            stages = {
                name: _Stage(topology.stages[name].load(device), []) for name in ENSEMBLE_STAGES
            }
            # What each stage's stream would hold: the input for the models, the join's
            # {branch: output} for average (the branches' outputs computed here, untimed).
            raw = [dumps(value) for value in inputs]
            branch: dict[str, list[Any]] = {}
            for name in ENSEMBLE_MODELS:
                stages[name].payloads = raw
                branch[name] = [
                    out
                    for start in range(0, n, 256)
                    for out in call(stages[name].handler, inputs[start : start + 256])
                ]
            joined = [
                {name.split(".", 1)[1]: branch[name][i] for name in ENSEMBLE_MODELS}
                for i in range(n)
            ]
            stages[ENSEMBLE_JOIN].payloads = [dumps(value) for value in joined]
            results = call(stages[ENSEMBLE_JOIN].handler, joined[:256])
            wrong = sum(
                not ENSEMBLE.check(x, y) for x, y in zip(inputs[:256], results, strict=True)
            )
            if wrong:
                raise BenchError(f"ensemble-inprocess: {wrong} wrong outputs")

            def one_batch(stage: _Stage, start: int, size: int) -> tuple[float, float, float]:
                began = time.perf_counter()
                values = [loads(data) for data in stage.payloads[start : start + size]]
                decoded = time.perf_counter()
                outputs = call(stage.handler, values)
                ran = time.perf_counter()
                encoded = [dumps(output) for output in outputs]
                done = time.perf_counter()
                assert len(encoded) == size
                return decoded - began, ran - decoded, done - ran

            for stage in stages.values():  # warm-up
                for _ in range(20):
                    one_batch(stage, 0, plans[ENSEMBLE_JOIN][0])

            latencies: list[float] = []
            items, seconds, minimum = 0, 0.0, ctx.cap_s(*INPROCESS_MIN_S)
            while seconds < minimum:
                item_s = [0.0] * n
                for name, stage in stages.items():
                    start = 0
                    for size in plans[name]:
                        decode, handle, encode = one_batch(stage, start, size)
                        took = decode + handle + encode
                        stage.decode_s += decode
                        stage.handler_s += handle
                        stage.encode_s += encode
                        stage.items += size
                        stage.per_item.append(took / size)
                        for i in range(start, start + size):
                            item_s[i] += took
                        seconds += took
                        start += size
                items += n
                latencies += item_s

            idle = []
            for i in range(200):
                took = 0.0
                for stage in stages.values():
                    took += sum(one_batch(stage, i % n, 1))
                idle.append(took)
    finally:
        loop.close()
        torch.set_num_threads(previous)

    def median(values: Sequence[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    first, last = stages[ENSEMBLE_MODELS[0]], stages[ENSEMBLE_JOIN]
    handlers_s = sum(stage.handler_s for stage in stages.values())
    once = (first.decode_s + handlers_s + last.encode_s) / items
    return Result(
        "ensemble-inprocess",
        items,
        seconds,
        latency=Latency.of_seconds(latencies, "the sum of its three batches' times"),
        idle_latency=Latency.of_seconds(idle, "a batch of one through each of the three stages"),
        extra={
            "device": device,
            "batch_sizes": origin,
            "stages": list(ENSEMBLE_STAGES),
            "batches_per_pass": {name: len(plan) for name, plan in plans.items()},
            "mean_batch_size": {name: n / len(plan) for name, plan in plans.items()},
            "torch_threads": threads,
            "us_per_item": {
                name: {
                    "decode": stage.decode_s / stage.items * 1e6,
                    "handler": stage.handler_s / stage.items * 1e6,
                    "encode": stage.encode_s / stage.items * 1e6,
                }
                for name, stage in stages.items()
            },
            "items_per_s_at_median_batch_cost": 1
            / sum(median(stage.per_item) for stage in stages.values()),
            "items_per_s_one_decode_one_encode": 1 / once,
        },
    )
