"""The scikit-learn adapter: the ``iris`` example and an estimator file that the operator
names (pinned by its SHA-256), each through the real queue and a real worker process; the
loader's refusals in this process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from pipelines.examples.iris import train_iris
from queueing.client import Client
from queueing.errors import ConfigError
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.support import Workers, register, wait_finished
from workers.adapters.sklearn import SklearnModel, load_estimator

WAIT_S = 60


def test_iris_predicts_species_and_probabilities(
    settings: Settings, client: Client, workers: Workers, tmp_path: Path
) -> None:
    from pipelines.examples import iris

    register(settings, iris)
    workers.start("iris")
    data = load_iris()
    rows = data.data[::10]  # 15 flowers, every species
    jobs = client.submit_many("iris", [iris.example, *rows.tolist()])
    records = wait_finished(jobs, WAIT_S)
    assert [r.status for r in records] == [JobStatus.DONE] * len(jobs), [r.error for r in records]

    model = joblib.load(train_iris(str(tmp_path / "iris.joblib")))
    expected_labels = model.predict(np.array([iris.example, *rows]))
    expected_probs = model.predict_proba(np.array([iris.example, *rows]))
    results = [r.result for r in records]
    assert results[0]["predict"] == "setosa"
    assert [r["predict"] for r in results] == expected_labels.tolist()
    np.testing.assert_allclose([r["predict_proba"] for r in results], expected_probs, atol=1e-9)
    assert (
        sum(
            label == name
            for label, name in zip(
                expected_labels[1:], data.target_names[data.target[::10]], strict=True
            )
        )
        >= 14
    )


def test_an_operator_named_estimator_file_is_served(
    settings: Settings, client: Client, workers: Workers, tmp_path: Path
) -> None:
    from tests.adapters.pipelines import t_estimator

    data = load_iris()
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(data.data, data.target)
    path = tmp_path / "tree.pkl"
    joblib.dump(tree, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    register(settings, t_estimator)
    workers.start(
        "t_estimator",
        BATCHLINE_TEST_ESTIMATOR=str(path),
        BATCHLINE_TEST_ESTIMATOR_SHA256=digest,
    )
    rows = data.data[::7]
    results = [job.result(timeout=WAIT_S) for job in client.submit_many("t_estimator", list(rows))]
    assert results == tree.predict(rows).tolist()


def test_the_loader_refuses_a_missing_or_different_file(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    with pytest.raises(ConfigError, match="no model file"):
        load_estimator(path)
    joblib.dump(DecisionTreeClassifier().fit([[0], [1]], [0, 1]), path)
    with pytest.raises(ConfigError, match="SHA-256"):
        load_estimator(path, sha256="0" * 64)
    assert hasattr(load_estimator(path, hashlib.sha256(path.read_bytes()).hexdigest()), "predict")

    model_file = str(path)

    class NoProba(SklearnModel):
        path = model_file
        methods = ("transform",)

    with pytest.raises(ConfigError, match="transform"):
        NoProba().setup("cpu")

    class NoPath(SklearnModel):
        pass

    with pytest.raises(ConfigError, match="path"):
        NoPath().setup("cpu")
