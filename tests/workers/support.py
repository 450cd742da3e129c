"""Helpers for the worker tests: the shared ones (tests.support) and what the test pipelines
record."""

from __future__ import annotations

import subprocess

import redis

from queueing.settings import Settings
from tests.pipelines import BATCHES, SEEN
from tests.support import (
    KEYS,
    assert_drained,
    backlog,
    batchline_cli,
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
    "batches",
    "batchline_config",
    "register",
    "seen",
    "stat",
    "wait_exit",
    "wait_finished",
    "wait_until",
]


def seen(r: redis.Redis, stage: str) -> list[int]:
    """Every ``x`` a handler of ``stage`` received, in order (repeats included)."""
    return [int(x) for x in r.lrange(SEEN + stage, 0, -1)]


def batches(r: redis.Redis, stage: str) -> list[int]:
    """The size of every handler call of ``stage``, in order."""
    return [int(n) for n in r.lrange(BATCHES + stage, 0, -1)]


def batchline_config(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``batchline config ARGS`` (live settings) run as a user would, against ``settings``."""
    return batchline_cli(settings, "config", *args)
