"""The worker runtime: the ``batch`` decorator, stages, the batching loop, shutdown."""

from workers.batching import BatchConfig, BatchContractError, BatchedHandler, batch
from workers.device import resolve_device
from workers.loop import StageLoop
from workers.stage import Route, Stage, Topology
from workers.streaming import Slot, StreamingLoop
from workers.worker import Worker, publish

__all__ = [
    "BatchConfig",
    "BatchContractError",
    "BatchedHandler",
    "Route",
    "Slot",
    "Stage",
    "StageLoop",
    "StreamingLoop",
    "Topology",
    "Worker",
    "batch",
    "publish",
    "resolve_device",
]
