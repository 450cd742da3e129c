"""Pipelines used by the tests (loaded by workers through BATCHLINE_PIPELINES).

They import neither torch nor anything slow, so that a worker of theirs starts in a fraction of
a second. Their models record what they see in the test server, so that a test can tell which
items reached a model (and how often) and the size of every batch it ran:

- ``test:seen:<stage>``: a list, one ``x`` per item a handler call received;
- ``test:batches:<stage>``: a list, the size of each handler call.

Items are dicts ``{"x": int, ...}``; the optional keys make the model misbehave on purpose:

- ``"fail": true``: the handler raises for any batch that holds this item;
- ``"kill": true``: the worker process SIGKILLs itself (a poison entry);
- ``"sleep": s``: the handler sleeps ``s`` seconds (the longest of its batch) after recording.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import redis

from pipelines.dsl import Pipeline, stage
from workers.batching import batch
from workers.stage import Route

SEEN = "test:seen:"
BATCHES = "test:batches:"

_client: redis.Redis | None = None


def _redis() -> redis.Redis | None:
    """A client of the server the worker serves (None outside a worker process)."""
    global _client
    if _client is None:
        url = os.environ.get("BATCHLINE_REDIS_URL") or os.environ.get("REDIS_URL")
        if not url:
            return None
        _client = redis.Redis.from_url(url)
    return _client


def record(stage_name: str, items: list[Any], client: redis.Redis | None = None) -> None:
    """Note that a handler of ``stage_name`` was called on ``items`` (one round trip)."""
    client = client or _redis()
    if client is None:
        return
    xs = [item["x"] if isinstance(item, dict) and "x" in item else -1 for item in items]
    pipe = client.pipeline(transaction=True)
    if xs:
        pipe.rpush(SEEN + stage_name, *xs)
    pipe.rpush(BATCHES + stage_name, len(items))
    pipe.execute()


def misbehave(items: list[Any]) -> None:
    """What the marked items ask for: a crash, then a delay, then an exception."""
    if any(item.get("kill") for item in items):
        os.kill(os.getpid(), signal.SIGKILL)
    delay = max((float(item.get("sleep", 0)) for item in items), default=0.0)
    if delay:
        time.sleep(delay)
    bad = [item["x"] for item in items if item.get("fail")]
    if bad:
        raise ValueError(f"bad input x={bad[0]}")


class Recorded:
    """A model class whose setup connects to the test server (from REDIS_URL)."""

    stage_name = ""

    def setup(self, device: str) -> None:
        self.device = device
        url = os.environ.get("BATCHLINE_REDIS_URL") or os.environ.get("REDIS_URL")
        self.redis = redis.Redis.from_url(url) if url else None

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record(self.stage_name, items, self.redis)
        misbehave(items)
        return [{"x": item["x"], "y": item["x"] * 2} for item in items]


# -- t_batch: one sync stage, batches of up to 8, a short wait ------------------------------


class BatchModel(Recorded):
    stage_name = "t_batch.model"

    @batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run(items)


t_batch = Pipeline("t_batch", stage(BatchModel, name="model"), example={"x": 1})


# -- t_wait: batches of up to 8, and a long wait for more ------------------------------------


class WaitModel(Recorded):
    stage_name = "t_wait.model"

    @batch(max_batch_size=8, batch_wait_timeout_s=0.5)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run(items)


t_wait = Pipeline("t_wait", stage(WaitModel, name="model"), example={"x": 1})


# -- t_single: batches of one (a poison entry is alone in its batch) -------------------------


class SingleModel(Recorded):
    stage_name = "t_single.model"

    @batch(max_batch_size=1, batch_wait_timeout_s=0)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run(items)


t_single = Pipeline("t_single", stage(SingleModel, name="model"), example={"x": 1})


# -- t_contract: a handler that breaks the one-output-per-input contract ---------------------


class ShortModel:
    @batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    def predict(self, items: list[Any]) -> list[Any]:
        record("t_contract.model", items)
        return list(items)[:-1]


t_contract = Pipeline("t_contract", stage(ShortModel, name="model"), example={"x": 1})


# -- t_chain: an async @batch function, then a plain function (batched with defaults) --------


@batch(max_batch_size=4, batch_wait_timeout_s=0.01)
async def first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("t_chain.first", items)
    delay = max((float(item.get("sleep", 0)) for item in items), default=0.0)
    if delay:
        await asyncio.sleep(delay)
    return [{"x": item["x"] + 1} for item in items]


def second(items: list[dict[str, Any]]) -> list[int]:
    record("t_chain.second", items)
    return [item["x"] * 10 for item in items]


t_chain = Pipeline("t_chain", first, second, example={"x": 1})


# -- t_route: a router that sends odd x to `heavy` and answers even x itself -----------------


@batch(max_batch_size=8, batch_wait_timeout_s=0.01)
def router(items: list[dict[str, Any]]) -> list[Any]:
    record("t_route.router", items)
    out: list[Any] = []
    for item in items:
        if item.get("to"):
            out.append(Route(item["to"], item))
        elif item["x"] % 2:
            out.append(Route("heavy", item))
        else:
            out.append({"by": "router", "x": item["x"]})
    return out


@batch(max_batch_size=8, batch_wait_timeout_s=0.01)
def heavy(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    record("t_route.heavy", items)
    return [{"by": "heavy", "x": item["x"]} for item in items]


t_route = Pipeline("t_route", stage(router, routes=["heavy"]), heavy, example={"x": 1})
