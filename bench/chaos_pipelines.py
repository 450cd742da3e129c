"""The pipeline the chaos suite (:mod:`bench.chaos`) runs its faults against (workers load it
with ``BATCHLINE_PIPELINES=bench.chaos_pipelines``).

``chaos``: one sync stage, batches of up to 32. Items are ``{"i": int}``, optionally with
``"poison": true``. For every batch the model first counts one execution per item in Redis
(``HINCRBY <prefix>:chaos:executions <i> 1``, one round trip, retried while Redis is
restarting), so a job re-run after a crash shows as a count above 1; then a batch holding a
poison item ends the process with ``os._exit(1)`` (a crash, not an exception); then it sleeps
``CHAOS_BATCH_SLEEP_S`` (default 5 ms) so that a kill is likely to land mid-batch, and answers
``{"i": i}`` per item.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from pipelines.dsl import Pipeline, stage
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

PIPELINES = [chaos]
