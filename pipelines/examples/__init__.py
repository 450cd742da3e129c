"""The example pipelines registered by default."""

from pipelines.examples.chain import chain
from pipelines.examples.composed import composed
from pipelines.examples.echo import echo
from pipelines.examples.ensemble import ensemble
from pipelines.examples.mlp import mlp

PIPELINES = [echo, mlp, composed, ensemble, chain]

__all__ = ["PIPELINES", "chain", "composed", "echo", "ensemble", "mlp"]
