"""Keras 3: serve a ``.keras`` model on Keras's torch backend (no TensorFlow needed), one
model call per batch.

    class Scorer(KerasModel):
        path = "/models/scorer.keras"
        max_batch_size = 256

``KERAS_BACKEND`` defaults to ``torch`` here (it must be set before Keras is first imported;
another backend that is installed works too). The model is loaded on the worker's device and
called as ``model(batch, training=False)``; outputs (a tensor, or a dict / list of them) are
split per item like any adapter's. A TensorFlow SavedModel needs TensorFlow itself
(``keras.layers.TFSMLayer``): export it to ``.keras`` instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from workers.adapters.base import ModelStage, as_numpy, map_arrays, required
from workers.adapters.extras import require

PathLike = str | os.PathLike[str]


class KerasModel(ModelStage):
    """A batched stage around a Keras 3 model file (see the module doc)."""

    extras: ClassVar[tuple[str, ...]] = ("keras",)
    path: ClassVar[PathLike | None] = None
    """The ``.keras`` file (``model.save(path)``)."""
    max_batch_size: ClassVar[int] = 256

    def load(self, device: str) -> Any:
        path = os.fspath(required(self, "path"))
        keras = import_keras()
        self.keras_device = keras_device(device)
        with keras.device(self.keras_device):
            return keras.saving.load_model(path, compile=False)

    def forward(self, batch: Any) -> Any:
        keras = import_keras()
        # Keras keeps its device scope per thread: the model thread needs its own.
        with keras.device(self.keras_device):
            return self.model(batch, training=False)

    def to_numpy(self, outputs: Any) -> Any:
        return map_arrays(as_numpy, outputs)


def import_keras() -> Any:
    """Keras, on the torch backend unless KERAS_BACKEND names another."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    return require("keras", "keras", "the Keras adapter")


def keras_device(device: str) -> str:
    """Keras's name of a worker device: ``cuda:1`` -> ``gpu:1``, ``cpu`` -> ``cpu``."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return f"gpu:{index or 0}"
    return device
