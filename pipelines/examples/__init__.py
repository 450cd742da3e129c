"""The example pipelines registered by default."""

from pipelines.examples.echo import echo
from pipelines.examples.mlp import mlp

PIPELINES = [echo, mlp]

__all__ = ["PIPELINES", "echo", "mlp"]
