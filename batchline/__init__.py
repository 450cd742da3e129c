"""batchline: queue-driven model serving on Redis streams.

The public API in one place: the enqueue clients, the ``batch`` decorator, pipelines.
"""

from pipelines import Pipeline, Route, stage
from queueing import AsyncClient, Client, Settings
from workers import batch

__all__ = ["AsyncClient", "Client", "Pipeline", "Route", "Settings", "batch", "stage"]
