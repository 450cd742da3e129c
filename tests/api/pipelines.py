"""Pipelines for the gateway's tests (loaded by workers through BATCHLINE_PIPELINES)."""

from __future__ import annotations

import os
import time
from typing import Any

from pipelines.dsl import Pipeline
from workers.batching import batch


@batch(max_batch_size=8, batch_wait_timeout_s=0.001)
def greet(inputs: list[dict[str, Any]]) -> list[str]:
    return [f"hello {doc['name']}" for doc in inputs]


@batch(max_batch_size=8, batch_wait_timeout_s=0.001)
def flaky(inputs: list[Any]) -> list[Any]:
    if any(isinstance(value, dict) and value.get("fail") for value in inputs):
        raise ValueError("asked to fail")
    return inputs


@batch(max_batch_size=1, batch_wait_timeout_s=0.0)
def whoami(inputs: list[Any]) -> list[int]:
    time.sleep(0.02)  # long enough that the other replica gets its share
    return [os.getpid() for _ in inputs]


@batch(max_batch_size=4, batch_wait_timeout_s=0.0)
def tiny(inputs: list[Any]) -> list[Any]:
    return inputs


greet_pipeline = Pipeline(
    "greet",
    greet,
    input_schema={
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}},
        "required": ["name"],
        "additionalProperties": False,
    },
    example={"name": "Ada"},
)
flaky_pipeline = Pipeline("flaky", flaky)
whoami_pipeline = Pipeline("whoami", whoami)
tiny_pipeline = Pipeline("tiny", tiny, max_backlog=2)

PIPELINES = [greet_pipeline, flaky_pipeline, whoami_pipeline, tiny_pipeline]
