"""scikit-learn: serve any estimator with ``predict`` / ``predict_proba`` (a ``Pipeline`` too),
loaded once per worker from a joblib or pickle file that the operator names.

    class Churn(SklearnModel):
        path = os.environ.get("CHURN_MODEL", "/models/churn.joblib")
        methods = ("predict", "predict_proba")   # each item gets {"predict": ..., "predict_proba": [...]}
        sha256 = "9f2c..."                        # optional: refuse any other file

Loading a pickle runs code, so the file comes from the stage's code or the operator's
configuration, never from a request; ``sha256`` pins the exact file. Inputs (one row of
features per item; strings for a text pipeline with ``dtype = None``) are stacked into one
array and each method is called once per batch.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, ClassVar

from queueing.errors import ConfigError
from workers.adapters.base import ModelStage, required

PathLike = str | os.PathLike[str]


class SklearnModel(ModelStage):
    """A batched stage around a fitted scikit-learn estimator (see the module doc)."""

    extras: ClassVar[tuple[str, ...]] = ("sklearn",)
    path: ClassVar[PathLike | None] = None
    """The estimator's file (``joblib.dump`` or ``pickle.dump``)."""
    sha256: ClassVar[str | None] = None
    """If set, the file's SHA-256 (hex) must match before it is unpickled."""
    methods: ClassVar[tuple[str, ...]] = ("predict",)
    """Called once per batch each; one method: its output per item; several: a dict."""
    dtype: ClassVar[str | None] = None
    max_batch_size: ClassVar[int] = 256

    def load(self, device: str) -> Any:
        path = os.fspath(required(self, "path"))
        estimator = load_estimator(path, self.sha256)
        missing = [m for m in self.methods if not callable(getattr(estimator, m, None))]
        if missing or not self.methods:
            raise ConfigError(
                f"{type(self).__name__}: {type(estimator).__name__} from {path} has no "
                f"{', '.join(missing) or 'methods'} to call"
            )
        return estimator

    def forward(self, batch: Any) -> Any:
        outputs = {method: getattr(self.model, method)(batch) for method in self.methods}
        return outputs[self.methods[0]] if len(self.methods) == 1 else outputs


def load_estimator(path: PathLike, sha256: str | None = None) -> Any:
    """Unpickle an estimator with joblib (plain pickles load too). ConfigError if the file is
    missing or, with ``sha256``, is not that file."""
    import joblib

    if not os.path.isfile(path):
        raise ConfigError(f"no model file at {os.fspath(path)!r}")
    if sha256 is not None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != sha256.lower():
            raise ConfigError(
                f"{os.fspath(path)!r} has SHA-256 {digest}, not the {sha256} expected"
            )
    return joblib.load(path)
