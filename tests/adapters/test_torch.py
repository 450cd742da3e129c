"""The PyTorch adapter: the ``image_classifier`` example and a state_dict file named by the
operator, each through the real queue and a real worker process (JSON and raw tensor inputs
alike); the other sources of a module (TorchScript, torch.export) in this process."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.examples.image_classifier import SHAPE, build_cnn, synthetic_images
from queueing.client import Client
from queueing.errors import ConfigError, JobFailed
from queueing.jobs import JobStatus
from queueing.message import from_tensor_document
from queueing.settings import Settings
from tests.adapters.pipelines import IN, OUT, build_linear
from tests.support import Workers, register, wait_finished
from workers.adapters.torch import TorchModel

WAIT_S = 60


def test_image_classifier_answers_json_and_raw_tensors_alike(
    settings: Settings, client: Client, workers: Workers
) -> None:
    from pipelines.examples import image_classifier

    register(settings, image_classifier)
    workers.start("image_classifier")
    images = synthetic_images(12, seed=3)
    as_json = client.submit_many("image_classifier", [image.tolist() for image in images])
    as_tensors = client.submit_many("image_classifier", list(images))
    records = wait_finished(as_json + as_tensors, WAIT_S)
    assert [r.status for r in records] == [JobStatus.DONE] * 24, [r.error for r in records]

    with torch.no_grad():
        expected = build_cnn()(torch.from_numpy(images)).softmax(dim=-1).numpy()
    for kind, jobs in (("json", as_json), ("tensor", as_tensors)):
        results = [job.result(timeout=1) for job in jobs]
        assert [r["label"] for r in results] == expected.argmax(axis=-1).tolist(), kind
        np.testing.assert_allclose([r["probs"] for r in results], expected, atol=1e-5)
    assert len({r["label"] for r in (job.result(timeout=1) for job in as_json)}) > 1


def test_a_bad_image_fails_alone(settings: Settings, client: Client, workers: Workers) -> None:
    from pipelines.examples import image_classifier

    register(settings, image_classifier)
    workers.start("image_classifier")
    good = list(synthetic_images(4, seed=1))
    jobs = client.submit_many("image_classifier", [*good[:2], np.zeros((3, 8, 8)), *good[2:]])
    records = wait_finished(jobs, WAIT_S)
    assert [r.status for r in records] == [JobStatus.DONE] * 2 + [JobStatus.FAILED] + [
        JobStatus.DONE
    ] * 2
    with pytest.raises(JobFailed):
        jobs[2].result(timeout=1)


def test_a_state_dict_file_serves_tensors_back_as_tensors(
    settings: Settings, client: Client, workers: Workers, tmp_path: Path
) -> None:
    from tests.adapters.pipelines import t_linear

    torch.manual_seed(7)
    trained = build_linear()
    path = tmp_path / "linear.pt"
    torch.save(trained.state_dict(), path)
    register(settings, t_linear)
    workers.start("t_linear", BATCHLINE_TEST_WEIGHTS=str(path))

    rows = np.random.default_rng(0).normal(size=(5, IN)).astype(np.float32)
    tensor_jobs = client.submit_many("t_linear", list(rows))
    json_jobs = client.submit_many("t_linear", rows.tolist())
    with torch.no_grad():
        expected = trained(torch.from_numpy(rows)).numpy()
    for i, job in enumerate(tensor_jobs):
        result = job.result(timeout=WAIT_S)
        assert isinstance(result, np.ndarray)
        assert result.dtype == np.float32
        assert result.shape == (OUT,)
        np.testing.assert_allclose(result, expected[i], atol=1e-6)
    for i, job in enumerate(json_jobs):
        result = job.result(timeout=WAIT_S)
        assert isinstance(result, list)
        np.testing.assert_allclose(result, expected[i], atol=1e-6)


# -- in this process: the other sources of a module --------------------------------------


def _run(stage: TorchModel, items: list[Any]) -> list[Any]:
    stage.setup("cpu")
    with torch.inference_mode():
        return stage.handle.call_batch_sync(items)


def test_torchscript_and_exported_programs_serve_like_the_module(tmp_path: Path) -> None:
    module = build_cnn().eval()
    images = synthetic_images(3, seed=5)
    with torch.no_grad():
        expected = module(torch.from_numpy(images)).numpy()

    scripted = tmp_path / "cnn.ts"
    with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated
        warnings.filterwarnings("ignore", ".*torch.jit.* is deprecated", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), scripted)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: batch},))
    saved = tmp_path / "cnn.pt2"
    torch.export.save(program, saved)

    class Scripted(TorchModel):
        torchscript = str(scripted)

    class Exported(TorchModel):
        exported = str(saved)

    for stage in (Scripted(), Exported()):
        # numpy arrays in (as a tensor payload arrives): tensor documents out
        results = [from_tensor_document(doc) for doc in _run(stage, list(images))]
        np.testing.assert_allclose(results, expected, atol=1e-5)
        # JSON lists in: lists out
        np.testing.assert_allclose(_run(stage, images.tolist()), expected, atol=1e-5)


def test_a_model_needs_exactly_one_source(tmp_path: Path) -> None:
    class Nothing(TorchModel):
        pass

    class Both(TorchModel):
        torchscript = "a.ts"
        exported = "b.pt2"

    class WeightsWithoutBuild(TorchModel):
        weights = "w.pt"

    for cls in (Nothing, Both, WeightsWithoutBuild):
        with pytest.raises(ConfigError, match="one source"):
            cls().setup("cpu")


def test_half_precision_is_ignored_on_the_cpu() -> None:
    class Half(TorchModel):
        half = True

        def build(self) -> torch.nn.Module:
            return build_linear()

    stage = Half()
    (row,) = _run(stage, [[0.5] * IN])
    assert stage.use_half is False
    assert len(row) == OUT
    assert all(isinstance(x, float) for x in row)
