"""Pipelines of the adapter tests. Their model files are named by the environment the test
gives the worker process, the way an operator names them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pipelines.dsl import Pipeline, stage
from workers.adapters.rl import RLlibPolicy
from workers.adapters.sklearn import SklearnModel
from workers.adapters.torch import TorchModel

if TYPE_CHECKING:
    import torch

IN, OUT = 6, 4


def build_linear() -> torch.nn.Module:
    """The module whose state_dict the torch tests save (weights overwritten by the file)."""
    import torch

    return torch.nn.Linear(IN, OUT)


class LinearFromFile(TorchModel):
    weights = os.environ.get("BATCHLINE_TEST_WEIGHTS", "unset.pt")
    max_batch_size = 16

    def build(self) -> torch.nn.Module:
        return build_linear()


class EstimatorFromFile(SklearnModel):
    path = os.environ.get("BATCHLINE_TEST_ESTIMATOR", "unset.joblib")
    sha256 = os.environ.get("BATCHLINE_TEST_ESTIMATOR_SHA256") or None
    methods = ("predict",)


class RLlibFromCheckpoint(RLlibPolicy):
    checkpoint = os.environ.get("BATCHLINE_TEST_RLLIB", "unset")


t_linear = Pipeline("t_linear", stage(LinearFromFile, name="model"))
t_estimator = Pipeline("t_estimator", stage(EstimatorFromFile, name="model"))
t_rllib = Pipeline("t_rllib", stage(RLlibFromCheckpoint, name="act"))
