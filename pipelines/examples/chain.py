"""``chain``: preprocess -> model -> postprocess, three stages, each batched and scaled on
its own. Input: up to 16 numbers (padded). Output: ``{"label": name, "confidence": p}``."""

from __future__ import annotations

from typing import Any

from pipelines.dsl import Pipeline, stage
from pipelines.examples.mlp import FEATURES, MLPClassifier
from workers.batching import batch

LABELS = ("north", "east", "south", "west")


@batch(max_batch_size=256, batch_wait_timeout_s=0.002)
async def preprocess(inputs: list[list[float]]) -> list[list[float]]:
    """Pad to 16 features and standardise each input."""
    outputs = []
    for values in inputs:
        padded = (list(values) + [0.0] * FEATURES)[:FEATURES]
        mean = sum(padded) / FEATURES
        spread = (sum((v - mean) ** 2 for v in padded) / FEATURES) ** 0.5 or 1.0
        outputs.append([(v - mean) / spread for v in padded])
    return outputs


@batch(max_batch_size=256, batch_wait_timeout_s=0.002)
async def postprocess(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"label": LABELS[p["label"]], "confidence": p["probs"][p["label"]]} for p in predictions
    ]


chain = Pipeline(
    "chain",
    preprocess,
    stage(MLPClassifier, name="model"),
    postprocess,
    input_schema={
        "type": "array",
        "items": {"type": "number"},
        "minItems": 1,
        "maxItems": FEATURES,
    },
    example=[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0],
    description="preprocess -> torch MLP -> postprocess, one stream stage each.",
)
