"""Helpers of the composition tests: the shared ones (tests.support) and what the test
pipelines record."""

from __future__ import annotations

import redis

from tests.composition.pipelines import SEEN
from tests.support import (
    KEYS,
    assert_drained,
    backlog,
    register,
    stat,
    wait_exit,
    wait_finished,
    wait_until,
)

__all__ = [
    "KEYS",
    "assert_drained",
    "backlog",
    "register",
    "seen",
    "stat",
    "wait_exit",
    "wait_finished",
    "wait_ready",
    "wait_until",
]


def wait_ready(r: redis.Redis, name: str, timeout: float) -> None:
    """Wait until the worker named ``name`` has loaded its stages and heart-beaten."""
    wait_until(
        lambda: r.zscore(KEYS.workers, name) is not None,
        timeout,
        f"worker {name} never announced itself",
    )


def seen(r: redis.Redis, stage: str) -> list[int]:
    """Every ``x`` a handler of ``stage`` received, in order (repeats included)."""
    return [int(x) for x in r.lrange(SEEN + stage, 0, -1)]
