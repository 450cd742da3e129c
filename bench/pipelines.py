"""Pipelines that only the bench serves (workers load them with
``BATCHLINE_PIPELINES=pipelines.examples,bench.pipelines``).

``echo3``: three pass-through stages in a chain, each batched exactly as the ``echo`` example's
one stage (its settings are read from it, so the two stay comparable): what each added stage
of a chain costs, with nothing to compute.
"""

from __future__ import annotations

from typing import Any

from pipelines.dsl import Pipeline, stage
from pipelines.examples.echo import echo
from workers.batching import batch

ECHO_BATCHING = echo.compile().stages["echo.echo"].config
"""The ``echo`` example's max_batch_size and batch_wait_timeout_s."""

_batched = batch(
    max_batch_size=ECHO_BATCHING.max_batch_size,
    batch_wait_timeout_s=ECHO_BATCHING.batch_wait_timeout_s,
)


@_batched
async def a(requests: list[Any]) -> list[Any]:
    return list(requests)


@_batched
async def b(requests: list[Any]) -> list[Any]:
    return list(requests)


@_batched
async def c(requests: list[Any]) -> list[Any]:
    return list(requests)


echo3 = Pipeline(
    "echo3",
    stage(a),
    stage(b),
    stage(c),
    example={"hello": "world"},
    description="Three pass-through stages, each batched as the echo example (bench only).",
)

PIPELINES = [echo3]
