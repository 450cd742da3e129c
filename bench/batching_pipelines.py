"""Pipelines of the batching scenarios (``bench.scenarios_batching``; workers load them with
``BATCHLINE_PIPELINES=bench.batching_pipelines``). Their models sleep for what a batch would
cost, so they burn no CPU on a shared machine and cost exactly what they claim:

- ``tokens_count`` / ``tokens_cost``: a token model padded to the batch's longest item: a
  batch costs ``FIXED_S + PER_TOKEN_S * len(batch) * longest``. The first is bounded by count
  (32 items), the second by that padded cost (4096 padded tokens: 32 items of 128).
- ``fixedcost``: a GPU-like model, ``2 ms + 0.05 ms per item``, whose batch wait is changed
  live by the adaptive-wait scenario (declared ``batch_wait_timeout_s=0``).
- ``prio``: batches of 32 items that take 20 ms whatever their size (the priority lanes'
  scenario, ``bench.scenarios_priority``).
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.dsl import Pipeline, stage
from workers.batching import batch

FIXED_S = 0.001
PER_TOKEN_S = 0.000001
COUNT_BOUND = 32
COST_BOUND = 4096


def padded_tokens(items: list[dict[str, Any]]) -> int:
    """What a batch costs a padded model: its size times its longest item's tokens."""
    return len(items) * max((len(item["tokens"]) for item in items), default=0)


def _run(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    time.sleep(FIXED_S + PER_TOKEN_S * padded_tokens(items))
    return [{"n": len(item["tokens"])} for item in items]


@batch(max_batch_size=COUNT_BOUND)
def by_count(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _run(items)


@batch(max_batch_size=COST_BOUND, batch_size_fn=padded_tokens, max_batch_items=64)
def by_cost(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _run(items)


tokens_count = Pipeline("tokens_count", stage(by_count, name="model"), example={"tokens": [1]})
tokens_cost = Pipeline("tokens_cost", stage(by_cost, name="model"), example={"tokens": [1]})

GPU_FIXED_S = 0.002
GPU_PER_ITEM_S = 0.00005


@batch(max_batch_size=64, batch_wait_timeout_s=0)
def gpu_like(items: list[Any]) -> list[Any]:
    time.sleep(GPU_FIXED_S + GPU_PER_ITEM_S * len(items))
    return list(items)


fixedcost = Pipeline("fixedcost", stage(gpu_like, name="model"), example={"x": 1})

PRIO_BATCH = 32
PRIO_BATCH_S = 0.02
"""``prio``: batches of 32 that take 20 ms each (the priority scenario's model)."""


@batch(max_batch_size=PRIO_BATCH, batch_wait_timeout_s=0)
def prio_model(items: list[Any]) -> list[Any]:
    time.sleep(PRIO_BATCH_S)
    return list(items)


prio = Pipeline("prio", stage(prio_model, name="model"), example={"x": 1})
