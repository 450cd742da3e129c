"""Streaming pipelines of the tests, loaded by their workers through BATCHLINE_PIPELINES.

Items are ``{"x": int, "n": int}``: an item streams ``n`` chunks ``{"x": x, "i": 0..n-1}``.
Optional: ``"sleep": s`` per step (the longest of the step's items), ``"fail_at": i`` (the
item's output at step i is an exception: that item fails, the others go on), ``"kill": true``
(the item's first step SIGKILLs the worker: a poison input).

Each step is recorded in the test server: ``test:steps:<stage>`` gets one entry per step, the
``x`` of every item in it, comma-joined (so a test counts the steps each item ran, and sees
which items ran together)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from pipelines.dsl import Pipeline, stage
from tests.pipelines import _redis
from workers.batching import batch
from workers.streaming import Slot

STEPS = "test:steps:"


def record_step(stage_name: str, items: list[dict[str, Any]]) -> float:
    """Note one step of ``items``; how long the step sleeps."""
    client = _redis()
    if client is not None:
        client.rpush(STEPS + stage_name, ",".join(str(item["x"]) for item in items))
    return max((float(item.get("sleep", 0)) for item in items), default=0.0)


def output(item: dict[str, Any], step: int) -> Any:
    if item.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if step >= int(item["n"]):
        return StopIteration
    if item.get("fail_at") == step:
        return ValueError(f"item {item['x']} failed at step {step}")
    return {"x": item["x"], "i": step}


@batch(max_batch_size=4)
def gen(items: list[dict[str, Any]]) -> Any:
    """A sync generator: static streaming batches. It skips the items it is told have
    stopped (cancelled): the value of its ``yield``."""
    longest = max(int(item["n"]) for item in items)
    stopped: set[int] = set()
    for step in range(longest):
        live = [i for k, i in enumerate(items) if step < int(i["n"]) and k not in stopped]
        delay = record_step("t_gen.model", live)
        if delay:
            time.sleep(delay)
        gone = yield [output(item, step) for item in items]
        stopped |= gone or set()


t_gen = Pipeline("t_gen", stage(gen, name="model"), example={"x": 1, "n": 3})


@batch(max_batch_size=4)
async def agen(items: list[dict[str, Any]]) -> Any:
    """An async generator that returns once the longest is done (the others end by then)."""
    step = 0
    while any(step < int(item["n"]) for item in items):
        delay = record_step("t_agen.model", [i for i in items if step < int(i["n"])])
        if delay:
            await asyncio.sleep(delay)
        yield [output(item, step) for item in items]
        step += 1


t_agen = Pipeline("t_agen", stage(agen, name="model"), example={"x": 1, "n": 3})


@batch(max_batch_size=2, continuous=True)
def step(slots: list[Slot]) -> list[Any]:
    """A continuous step handler, two items at a time."""
    delay = record_step("t_cont.model", [slot.input for slot in slots])
    if delay:
        time.sleep(delay)
    return [output(slot.input, slot.steps) for slot in slots]


t_cont = Pipeline("t_cont", stage(step, name="model"), example={"x": 1, "n": 3})


@batch(max_batch_size=2)
def static_pairs(items: list[dict[str, Any]]) -> Any:
    """t_cont's model as a generator: static batches of two."""
    longest = max(int(item["n"]) for item in items)
    for index in range(longest):
        live = [i for i in items if index < int(i["n"])]
        delay = record_step("t_static.model", live)
        if delay:
            time.sleep(delay)
        yield [output(item, index) for item in items]


t_static = Pipeline("t_static", stage(static_pairs, name="model"), example={"x": 1, "n": 3})


@batch(max_batch_size=4)
def lengthen(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A plain first stage: each item streams twice as many chunks."""
    return [{**item, "n": 2 * int(item["n"])} for item in items]


t_pre = Pipeline("t_pre", lengthen, stage(gen, name="model"), example={"x": 1, "n": 3})
