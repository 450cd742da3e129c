"""Pipelines of the composition tests (loaded by workers through BATCHLINE_PIPELINES).

They import neither torch nor anything slow. Every handler records what it receives in the test
server, so that a test can tell which items reached which stage and how often:

- ``comp:seen:<pipeline.stage>``: a list, one ``x`` per item a handler call received;
- ``comp:joined``: a list, the JSON of every item the ``c_fan`` join received.

Items are dicts ``{"x": int, ...}``. Pipelines:

- ``c_kill``: ``head -> middle -> tail``; ``middle`` is slow (0.5 s a batch, sync, in the model
  thread), so a test can SIGKILL its worker mid-batch. Result: ``{"x": x, "value": (x + 1) * 10}``.
- ``c_fan``: ``fan_out(branch_a, branch_b) -> join`` (so a ``split`` stage comes first).
  ``branch_a`` raises for ``"fail_a"`` items, ``branch_b`` for ``"fail_b"`` ones (and sleeps
  ``"sleep_b"`` seconds, after recording). Result:
  ``{"a": x + 1000, "b": x + 2000}``.
- ``c_hop``: ``first -> second``, both fast. Result: ``x * 3``.
- ``c_timed``: ``one`` (batches of <= 4, sleeps 0.2 s a batch) -> ``two`` (batches of <= 3) ->
  ``three`` (defaults). Result: ``x``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis

from pipelines.dsl import Pipeline, fan_out
from workers.batching import batch

SEEN = "comp:seen:"
JOINED = "comp:joined"
MIDDLE_SLEEP_S = 0.5
ONE_SLEEP_S = 0.2

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """A client of the server the worker serves."""
    global _client
    if _client is None:
        url = os.environ.get("BATCHLINE_REDIS_URL") or os.environ.get("REDIS_URL")
        if not url:
            raise RuntimeError("the composition test pipelines need REDIS_URL")
        _client = redis.Redis.from_url(url)
    return _client


def record(stage_name: str, items: list[Any]) -> None:
    """Note that a handler of ``stage_name`` was called on ``items``."""
    xs = [item["x"] for item in items]
    if xs:
        _redis().rpush(SEEN + stage_name, *xs)


def _raise_for(flag: str, items: list[dict[str, Any]]) -> None:
    bad = [item["x"] for item in items if item.get(flag)]
    if bad:
        raise ValueError(f"bad input x={bad[0]}")


# -- c_kill: a slow middle stage between two fast ones --------------------------------------


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def head(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_kill.head", items)
    return [{"x": item["x"], "value": item["x"] + 1} for item in items]


@batch(max_batch_size=8, batch_wait_timeout_s=0)
def middle(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_kill.middle", items)
    time.sleep(MIDDLE_SLEEP_S)
    return [{"x": item["x"], "value": item["value"] * 10} for item in items]


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def tail(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_kill.tail", items)
    return [{"x": item["x"], "value": item["value"]} for item in items]


c_kill = Pipeline("c_kill", head, middle, tail, example={"x": 1})


# -- c_fan: two branches and a join that records what it was given ---------------------------


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def branch_a(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_fan.branch_a", items)
    _raise_for("fail_a", items)
    return [{"x": item["x"], "v": item["x"] + 1000} for item in items]


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def branch_b(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_fan.branch_b", items)
    delay = max((float(item.get("sleep_b", 0)) for item in items), default=0.0)
    if delay:
        await asyncio.sleep(delay)
    _raise_for("fail_b", items)
    return [{"x": item["x"], "v": item["x"] + 2000} for item in items]


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def join(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if items:
        _redis().rpush(JOINED, *(json.dumps(item, sort_keys=True) for item in items))
    return [{"a": item["branch_a"]["v"], "b": item["branch_b"]["v"]} for item in items]


c_fan = Pipeline("c_fan", fan_out(branch_a, branch_b), join, example={"x": 1})


# -- c_hop: two fast stages (deadlines and cancellation between them) ------------------------


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_hop.first", items)
    return [{"x": item["x"]} for item in items]


@batch(max_batch_size=8, batch_wait_timeout_s=0)
async def second(items: list[dict[str, Any]]) -> list[int]:
    record("c_hop.second", items)
    return [item["x"] * 3 for item in items]


c_hop = Pipeline("c_hop", first, second, example={"x": 1})


# -- c_timed: three stages with known batch limits (per-stage timings) -----------------------


@batch(max_batch_size=4, batch_wait_timeout_s=0)
async def one(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_timed.one", items)
    await asyncio.sleep(ONE_SLEEP_S)
    return items


@batch(max_batch_size=3, batch_wait_timeout_s=0)
def two(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("c_timed.two", items)
    return items


def three(items: list[dict[str, Any]]) -> list[int]:
    record("c_timed.three", items)
    return [item["x"] for item in items]


c_timed = Pipeline("c_timed", one, two, three, example={"x": 1})

PIPELINES = [c_kill, c_fan, c_hop, c_timed]
