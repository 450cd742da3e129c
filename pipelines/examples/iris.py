"""``iris``: a scikit-learn pipeline (scaler + logistic regression) on the iris data set that
ships with scikit-learn, served with :class:`~workers.adapters.sklearn.SklearnModel`.

At setup the worker trains it (fixed seed, well under a second), saves it with joblib and
loads it back from that file, as a deployment loads the file its operator names.

Input: 4 numbers (sepal length, sepal width, petal length, petal width, in cm).
Output: ``{"predict": "setosa" | "versicolor" | "virginica", "predict_proba": [3 floats]}``.
"""

from __future__ import annotations

import os
import tempfile

from pipelines.dsl import Pipeline, stage
from workers.adapters.base import check_extras
from workers.adapters.sklearn import SklearnModel

SEED = 0
EXAMPLES_DIR = os.path.join(tempfile.gettempdir(), f"batchline-examples-{os.getuid()}")
"""Where the examples that train at setup save their model files (one folder per user)."""
MODEL_PATH = os.path.join(EXAMPLES_DIR, "iris.joblib")


def train_iris(path: str = MODEL_PATH, seed: int = SEED) -> str:
    """Fit the example pipeline on the iris data and save it to ``path`` (atomically, as
    several workers may start at once); returns ``path``."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(data.data, data.target_names[data.target])
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    scratch = f"{path}.{os.getpid()}.tmp"
    joblib.dump(model, scratch)
    os.replace(scratch, path)
    return path


class IrisClassifier(SklearnModel):
    path = MODEL_PATH
    methods = ("predict", "predict_proba")

    def setup(self, device: str) -> None:
        check_extras(self)  # before training, which imports the framework
        train_iris(MODEL_PATH)
        super().setup(device)


iris = Pipeline(
    "iris",
    stage(IrisClassifier, name="predict"),
    input_schema={
        "type": "array",
        "items": {"type": "number"},
        "minItems": 4,
        "maxItems": 4,
    },
    example=[5.1, 3.5, 1.4, 0.2],
    description="scikit-learn iris classifier (trained at worker start, loaded with joblib).",
)
