"""Pipelines for the bulk and webhook tests (loaded by workers through BATCHLINE_PIPELINES).

``t_gate``: items ``{"x": int}`` come back as ``{"x": x, "y": 2x}``, each recorded under
``test:seen:t_gate.model`` (see :mod:`tests.pipelines`). An item ``{"hold": true}`` waits
until the key ``test:gate`` exists (its batch awaits; the worker goes on heart-beating), so a
test can stop a bulk job at a known row; ``{"fail": true}`` fails.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipelines.dsl import Pipeline
from tests.pipelines import _redis, record
from workers.batching import batch

GATE = "test:gate"


@batch(max_batch_size=8, batch_wait_timeout_s=0.005)
async def model(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = _redis()
    if client is not None and any(item.get("hold") for item in items):
        while not client.exists(GATE):  # noqa: ASYNC110 (the gate is in another process)
            await asyncio.sleep(0.02)
    record("t_gate.model", items, client)
    bad = [item["x"] for item in items if item.get("fail")]
    if bad:
        raise ValueError(f"bad input x={bad[0]}")
    return [{"x": item["x"], "y": item["x"] * 2} for item in items]


t_gate = Pipeline("t_gate", model, example={"x": 1})
