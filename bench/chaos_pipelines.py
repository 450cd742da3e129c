"""The pipeline the chaos suite (:mod:`bench.chaos`) runs its faults against (workers load it
with ``BATCHLINE_PIPELINES=bench.chaos_pipelines``).

``chaos``: one sync stage, batches of up to 32. Items are ``{"i": int}``, optionally with
``"poison": true``. For every batch the model first counts one execution per item in Redis
(``HINCRBY <prefix>:chaos:executions <i> 1``, one round trip, retried while Redis is
restarting), so a job re-run after a crash shows as a count above 1; then a batch holding a
poison item ends the process with ``os._exit(1)`` (a crash, not an exception); then it sleeps
``CHAOS_BATCH_SLEEP_S`` (default 5 ms) so that a kill is likely to land mid-batch, and answers
``{"i": i}`` per item.

``chaos_chain`` (first -> middle -> last) and ``chaos_fan`` (left and right branches, then
join): stages that count executions as ``<stage>:<i>`` in the same hash and pass ``{"i": i}``
on, for the scenarios that kill a middle stage or a branch.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from pipelines.dsl import Pipeline, fan_out, stage
from workers.batching import batch

MAX_BATCH_SIZE = 32
RECORD_RETRY_S = 60.0
"""How long the model retries counting a batch while Redis is unreachable."""


def executions_key(prefix: str) -> str:
    """The hash of execution counts by input ``i``, under a run's key prefix."""
    return f"{prefix}:chaos:executions"


class ChaosModel:
    def setup(self, device: str) -> None:
        url = os.environ.get("BATCHLINE_REDIS_URL") or os.environ.get("REDIS_URL")
        if not url:
            raise RuntimeError("the chaos pipeline needs REDIS_URL")
        self.redis = redis.Redis.from_url(url)
        self.key = executions_key(os.environ.get("BATCHLINE_PREFIX") or "bl")
        self.sleep_s = float(os.environ.get("CHAOS_BATCH_SLEEP_S") or 0.005)

    def record(self, items: list[dict[str, Any]]) -> None:
        limit = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                pipe = self.redis.pipeline(transaction=True)
                for item in items:
                    pipe.hincrby(self.key, str(item["i"]), 1)
                pipe.execute()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > limit:
                    raise
                time.sleep(0.1)

    @batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.002)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.record(items)
        if any(item.get("poison") for item in items):
            os._exit(1)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [{"i": item["i"]} for item in items]


chaos = Pipeline(
    "chaos",
    stage(ChaosModel, name="model"),
    example={"i": 0},
    description="Counts every execution per input; poison inputs crash the worker (chaos only).",
)


class Step(ChaosModel):
    """A stage of ``chaos_chain`` / ``chaos_fan``: counts executions as ``<stage>:<i>`` and
    passes ``{"i": i}`` on (a join gets ``{branch: {"i": i}}`` and answers ``{"i": i}``)."""

    def setup(self, device: str) -> None:
        super().setup(device)
        self.name = type(self).__name__.lower()

    @batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.002)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        values = [item if "i" in item else next(iter(item.values())) for item in items]
        self.record([{"i": f"{self.name}:{value['i']}"} for value in values])
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [{"i": value["i"]} for value in values]


class First(Step):
    pass


class Middle(Step):
    pass


class Last(Step):
    pass


class Left(Step):
    pass


class Right(Step):
    pass


class Join(Step):
    pass


chaos_chain = Pipeline(
    "chaos_chain",
    stage(First, name="first"),
    stage(Middle, name="middle"),
    stage(Last, name="last"),
    example={"i": 0},
    description="Three counting stages in a chain (chaos only: its middle stage is killed).",
)

chaos_fan = Pipeline(
    "chaos_fan",
    fan_out(stage(Left, name="left"), stage(Right, name="right")),
    stage(Join, name="join"),
    example={"i": 0},
    description="Two counting branches and their join (chaos only: a branch is killed).",
)

PIPELINES = [chaos, chaos_chain, chaos_fan]
