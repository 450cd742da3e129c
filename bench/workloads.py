"""What the scenarios send: inputs per example pipeline, and a check of each output (a bench
that counts wrong answers as throughput is worse than none)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.examples.mlp import CLASSES, FEATURES

POOL = 4096
"""Distinct inputs per workload; longer runs cycle through them."""


@dataclass(frozen=True)
class Workload:
    pipeline: str
    """The batchline pipeline that serves it."""
    make: Callable[[int], list[Any]]
    """``make(n)``: n inputs, the same on every run."""
    check: Callable[[Any, Any], bool]
    """``check(input, output)``: is this output right for that input?"""


def _echo_inputs(n: int) -> list[Any]:
    return [{"i": i, "hello": "world"} for i in range(n)]


def _echo_check(value: Any, output: Any) -> bool:
    return bool(output == value)


def _mlp_pool() -> list[list[float]]:
    rng = random.Random(0)
    return [[round(rng.uniform(-2.0, 2.0), 6) for _ in range(FEATURES)] for _ in range(POOL)]


def _mlp_inputs(n: int) -> list[Any]:
    pool = _mlp_pool()
    return [pool[i % POOL] for i in range(n)]


def _mlp_check(value: Any, output: Any) -> bool:
    if not isinstance(output, dict):
        return False
    label, probs = output.get("label"), output.get("probs")
    return (
        isinstance(label, int)
        and 0 <= label < CLASSES
        and isinstance(probs, list)
        and len(probs) == CLASSES
        and math.isclose(sum(probs), 1.0, abs_tol=1e-3)
        and max(range(CLASSES), key=lambda k: probs[k]) == label
    )


def _ensemble_check(value: Any, output: Any) -> bool:
    if not isinstance(output, dict):
        return False
    label, logits = output.get("label"), output.get("logits")
    return (
        isinstance(label, int)
        and 0 <= label < CLASSES
        and isinstance(logits, list)
        and len(logits) == CLASSES
        and all(isinstance(x, float) and math.isfinite(x) for x in logits)
        and max(range(CLASSES), key=lambda k: logits[k]) == label
    )


ECHO = Workload("echo", _echo_inputs, _echo_check)
ECHO3 = Workload("echo3", _echo_inputs, _echo_check)
"""The same inputs through :data:`bench.pipelines.echo3` (three pass-through stages)."""
MLP = Workload("mlp", _mlp_inputs, _mlp_check)
ENSEMBLE = Workload("ensemble", _mlp_inputs, _ensemble_check)
"""The mlp inputs through the ``ensemble`` example (two MLPs, their logits averaged)."""
