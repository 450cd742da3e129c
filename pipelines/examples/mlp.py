"""``mlp``: a small torch MLP classifier, built in code with a fixed seed (no downloads).

Input: 16 numbers. Output: ``{"label": int, "probs": [4 floats]}``.
"""

from __future__ import annotations

from typing import Any

from pipelines.dsl import Pipeline, stage
from workers.adapters.base import check_extras
from workers.batching import batch

FEATURES = 16
CLASSES = 4
SEED = 0


def build_mlp(seed: int = SEED) -> Any:
    """The example classifier's network, with weights drawn from ``seed`` (no downloads)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, CLASSES),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


class MLPClassifier:
    extras = ("torch",)

    def setup(self, device: str) -> None:
        from workers.adapters.torch import prepare

        check_extras(self)
        self.device = device
        self.model = prepare(build_mlp(), device)

    @batch(max_batch_size=256, batch_wait_timeout_s=0.002)
    def classify(self, inputs: list[list[float]]) -> list[dict[str, Any]]:
        from workers.adapters.torch import stack

        probs = self.model(stack(inputs, self.device)).softmax(dim=-1)
        labels = probs.argmax(dim=-1).tolist()
        return [
            {"label": label, "probs": row}
            for label, row in zip(labels, probs.cpu().tolist(), strict=True)
        ]


mlp = Pipeline(
    "mlp",
    stage(MLPClassifier, name="classify"),
    input_schema={
        "type": "array",
        "items": {"type": "number"},
        "minItems": FEATURES,
        "maxItems": FEATURES,
    },
    example=[0.1 * i for i in range(FEATURES)],
    description="A 16-feature, 4-class torch MLP (fixed seed).",
)
