"""Compositions: declare pipelines of batched stages (chains and routes)."""

from pipelines.dsl import FanOut, Pipeline, StageDef, fan_out, stage
from pipelines.loading import load_pipelines
from workers.batching import batch
from workers.stage import Route

__all__ = [
    "FanOut",
    "Pipeline",
    "Route",
    "StageDef",
    "batch",
    "fan_out",
    "load_pipelines",
    "stage",
]
