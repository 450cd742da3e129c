"""``ensemble``: two small torch models see every input at once (a fan-out); a join averages
their logits. Input: 16 numbers. Output: ``{"label": int, "logits": [4 floats]}``."""

from __future__ import annotations

from typing import Any

from pipelines.dsl import Pipeline, fan_out, stage
from pipelines.examples.mlp import CLASSES, FEATURES, build_mlp
from workers.adapters.base import check_extras
from workers.batching import batch


class _Member:
    extras = ("torch",)
    seed = 0

    def setup(self, device: str) -> None:
        from workers.adapters.torch import prepare

        check_extras(self)
        self.device = device
        self.model = prepare(build_mlp(self.seed), device)

    @batch(max_batch_size=256, batch_wait_timeout_s=0.002)
    def logits(self, inputs: list[list[float]]) -> list[list[float]]:
        from workers.adapters.torch import stack, unstack

        return unstack(self.model(stack(inputs, self.device)))


class ModelA(_Member):
    seed = 1


class ModelB(_Member):
    seed = 2


@batch(max_batch_size=256, batch_wait_timeout_s=0.002)
async def average(joined: list[dict[str, list[float]]]) -> list[dict[str, Any]]:
    outputs = []
    for item in joined:
        logits = [(a + b) / 2 for a, b in zip(item["model_a"], item["model_b"], strict=True)]
        outputs.append({"label": max(range(CLASSES), key=logits.__getitem__), "logits": logits})
    return outputs


ensemble = Pipeline(
    "ensemble",
    fan_out(stage(ModelA, name="model_a"), stage(ModelB, name="model_b")),
    average,
    input_schema={
        "type": "array",
        "items": {"type": "number"},
        "minItems": FEATURES,
        "maxItems": FEATURES,
    },
    example=[0.05 * i for i in range(FEATURES)],
    description="Two torch MLPs on every input (fan-out); a join averages their logits.",
)
