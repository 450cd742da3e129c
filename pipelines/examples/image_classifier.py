"""``image_classifier``: a small torch CNN on 3x32x32 images, built in code with a fixed seed
(no downloads), served with :class:`~workers.adapters.torch.TorchModel`.

Input: one image, 3x32x32 numbers (pixel intensities, 0..1), as nested JSON lists or, much
cheaper, as a raw tensor (``client.submit("image_classifier", array)`` with a numpy array).
Output: ``{"label": int, "probs": [10 floats]}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.dsl import Pipeline, stage
from queueing.message import TENSOR_KEY
from workers.adapters.torch import TorchModel

if TYPE_CHECKING:
    import numpy as np
    import torch

SHAPE = (3, 32, 32)
CLASSES = 10
SEED = 0


def build_cnn(seed: int = SEED) -> torch.nn.Module:
    """The example CNN, weights drawn from ``seed``."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, CLASSES),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            scale = 1.0 / parameter[0].numel() ** 0.5 if parameter.dim() > 1 else 0.1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def synthetic_images(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """``n`` float32 images (n, 3, 32, 32): smooth colour gradients plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    base = np.stack([x, y, (x + y) / 2]).astype(np.float32)
    mix = rng.uniform(0, 1, size=(n, 3, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.05, size=(n, *SHAPE)).astype(np.float32)
    images: np.ndarray[Any, Any] = np.clip(base * mix + noise, 0, 1)
    return images


class ImageClassifier(TorchModel):
    max_batch_size = 256
    batch_wait_timeout_s = 0.002

    def build(self) -> torch.nn.Module:
        return build_cnn()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        probs: torch.Tensor = self.model(batch).softmax(dim=-1)
        return probs

    def unstack(self, outputs: Any, inputs: list[Any]) -> list[Any]:
        probs = self.to_numpy(outputs)
        labels = probs.argmax(axis=-1).tolist()
        return [
            {"label": label, "probs": row}
            for label, row in zip(labels, probs.tolist(), strict=True)
        ]


def _example() -> list[Any]:
    y = [[i / 31 for i in range(32)] for _ in range(32)]
    return [[[round(v, 2) for v in row] for row in y] for _ in range(3)]


_ROW = {"type": "array", "minItems": 32, "maxItems": 32, "items": {"type": "number"}}
_PLANE = {"type": "array", "minItems": 32, "maxItems": 32, "items": _ROW}

image_classifier = Pipeline(
    "image_classifier",
    stage(ImageClassifier, name="classify"),
    input_schema={
        "oneOf": [
            {"type": "array", "minItems": 3, "maxItems": 3, "items": _PLANE},
            {
                "type": "object",
                "required": [TENSOR_KEY],
                "description": "a tensor document: dtype, shape [3, 32, 32], base64 data",
            },
        ]
    },
    example=_example(),
    description="A 3x32x32-image, 10-class torch CNN (fixed seed); send raw tensors for speed.",
)
