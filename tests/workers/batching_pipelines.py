"""Pipelines of the batching tests (cost bounds, adaptive wait, live settings), loaded by their
workers through BATCHLINE_PIPELINES. Each records what its handler saw (see
:mod:`tests.pipelines`): ``test:seen:<stage>`` (each item's ``x``) and ``test:batches:<stage>``
(each call's size)."""

from __future__ import annotations

import time
from typing import Any

from pipelines.dsl import Pipeline, stage
from tests.pipelines import record
from workers.batching import batch

COST_BOUND = 10
"""t_cost's max_batch_size: the most total ``n`` one batch holds."""


def total_n(items: list[dict[str, Any]]) -> int:
    """t_cost's batch_size_fn: the sum of the items' ``n``."""
    return sum(int(item["n"]) for item in items)


class CostModel:
    """Batches bounded by the sum of their items' ``n`` (10), at most 8 items read at once."""

    @batch(max_batch_size=COST_BOUND, batch_size_fn=total_n, max_batch_items=8)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("t_cost.model", items)
        delay = max((float(item.get("sleep", 0)) for item in items), default=0.0)
        if delay:
            time.sleep(delay)
        return [{"x": item["x"], "n": item["n"]} for item in items]


t_cost = Pipeline("t_cost", stage(CostModel, name="model"), example={"x": 1, "n": 3})


class LiveModel:
    """Batches of 2 as declared; live settings change that."""

    @batch(max_batch_size=2, batch_wait_timeout_s=0)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("t_live.model", items)
        return [{"x": item["x"]} for item in items]


t_live = Pipeline("t_live", stage(LiveModel, name="model"), example={"x": 1})


class AutoModel:
    """An adaptive wait with a latency budget; a fixed cost of 2 ms per call."""

    @batch(max_batch_size=16, batch_wait_timeout_s="auto", max_latency_ms=50)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("t_auto.model", items)
        time.sleep(0.002)
        return [{"x": item["x"]} for item in items]


t_auto = Pipeline("t_auto", stage(AutoModel, name="model"), example={"x": 1})


class PriorityModel:
    """Batches of up to 9 (with lane weights 8/4/1: 8 high and 1 low when both wait), no
    wait; sleeps the longest ``sleep`` of its batch."""

    @batch(max_batch_size=9, batch_wait_timeout_s=0)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("t_prio.model", items)
        delay = max((float(item.get("sleep", 0)) for item in items), default=0.0)
        if delay:
            time.sleep(delay)
        return [{"x": item["x"]} for item in items]


t_prio = Pipeline("t_prio", stage(PriorityModel, name="model"), example={"x": 1})


class SinglePriorityModel:
    """Batches of one item, no wait; sleeps the item's ``sleep`` (so that the next batch,
    read meanwhile, waits in the inbox long enough to be refreshed before it runs)."""

    @batch(max_batch_size=1, batch_wait_timeout_s=0)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("t_prio1.model", items)
        time.sleep(float(items[0].get("sleep", 0)))
        return [{"x": item["x"]} for item in items]


t_prio1 = Pipeline("t_prio1", stage(SinglePriorityModel, name="model"), example={"x": 1})
