"""The example pipelines registered by default."""

from pipelines.examples.cartpole import cartpole
from pipelines.examples.chain import chain
from pipelines.examples.composed import composed
from pipelines.examples.echo import echo
from pipelines.examples.ensemble import ensemble
from pipelines.examples.generate import generate
from pipelines.examples.image_classifier import image_classifier
from pipelines.examples.iris import iris
from pipelines.examples.keras_tabular import keras_tabular
from pipelines.examples.mlp import mlp

PIPELINES = [
    echo,
    mlp,
    composed,
    ensemble,
    chain,
    image_classifier,
    iris,
    keras_tabular,
    cartpole,
    generate,
]

__all__ = [
    "PIPELINES",
    "cartpole",
    "chain",
    "composed",
    "echo",
    "ensemble",
    "generate",
    "image_classifier",
    "iris",
    "keras_tabular",
    "mlp",
]
