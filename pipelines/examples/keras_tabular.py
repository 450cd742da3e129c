"""``keras_tabular``: a small Keras 3 classifier of 8 tabular features into 3 classes, run on
Keras's torch backend (no TensorFlow), served with :class:`~workers.adapters.keras.KerasModel`.

At setup the worker trains it on synthetic data (fixed seed, about a second), saves it as a
``.keras`` file and loads it back from there.

Input: 8 numbers. Output: the 3 class probabilities.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from pipelines.dsl import Pipeline, stage
from pipelines.examples.iris import EXAMPLES_DIR
from workers.adapters.base import check_extras
from workers.adapters.keras import KerasModel, import_keras

FEATURES = 8
CLASSES = 3
SEED = 0
MODEL_PATH = os.path.join(EXAMPLES_DIR, "keras_tabular.keras")


def tabular_data(n: int, seed: int = SEED) -> tuple[Any, Any]:
    """(features (n, 8) float32, labels (n,)): the class is a banded linear score."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2]
    return x, np.digitize(score, [-0.5, 0.5])


def train_tabular(path: str = MODEL_PATH, seed: int = SEED) -> str:
    """Fit the example model and save it to ``path`` (atomically); returns ``path``."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x, y = tabular_data(2048, seed)
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    scratch = f"{path}.{os.getpid()}.keras"
    with warnings.catch_warnings():
        # Keras 3 saving its torch variables trips numpy 2's __array__(copy=) notice.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(scratch)
    os.replace(scratch, path)
    return path


class TabularModel(KerasModel):
    path = MODEL_PATH

    def setup(self, device: str) -> None:
        check_extras(self)  # before training, which imports the framework
        train_tabular(MODEL_PATH)
        super().setup(device)


keras_tabular = Pipeline(
    "keras_tabular",
    stage(TabularModel, name="predict"),
    input_schema={
        "type": "array",
        "items": {"type": "number"},
        "minItems": FEATURES,
        "maxItems": FEATURES,
    },
    example=[0.8, -0.2, 0.1, 0.0, 0.5, -1.0, 0.3, 0.2],
    description="Keras 3 tabular classifier on the torch backend (trained at worker start).",
)
