"""Compositions: declare pipelines of batched stages (chains and routes)."""

from pipelines.dsl import Pipeline, StageDef, stage
from pipelines.loading import load_pipelines
from workers.batching import batch
from workers.stage import Route

__all__ = ["Pipeline", "Route", "StageDef", "batch", "load_pipelines", "stage"]
