"""The Keras 3 adapter: the ``keras_tabular`` example (torch backend, no TensorFlow) through
the real queue and a real worker process, with JSON and raw tensor inputs."""

from __future__ import annotations

import numpy as np

from pipelines.examples.keras_tabular import CLASSES, tabular_data
from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.support import Workers, register, wait_finished

WAIT_S = 90


def test_keras_tabular_classifies_on_the_torch_backend(
    settings: Settings, client: Client, workers: Workers
) -> None:
    from pipelines.examples import keras_tabular

    register(settings, keras_tabular)
    workers.start("keras_tabular")
    x, y = tabular_data(200, seed=9)  # not the training data
    json_jobs = client.submit_many("keras_tabular", x.tolist())
    tensor_jobs = client.submit_many("keras_tabular", list(x[:5]))
    records = wait_finished(json_jobs + tensor_jobs, WAIT_S)
    assert [r.status for r in records] == [JobStatus.DONE] * 205, [r.error for r in records]

    probs = np.array([job.result(timeout=1) for job in json_jobs])
    assert probs.shape == (200, CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == y).mean() >= 0.85  # it learned the rule
    for i, job in enumerate(tensor_jobs):
        result = job.result(timeout=1)
        assert isinstance(result, np.ndarray)  # a tensor in, a tensor out
        np.testing.assert_allclose(result, probs[i], atol=1e-6)
