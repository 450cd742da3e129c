"""The RLlib adapter (the optional ``batchline[rllib]`` extra; skipped without ray): an RLlib
PPO module for CartPole-v1, saved as an algorithm checkpoint lays it out, served through the
real queue and a real worker process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from queueing.client import Client
from queueing.settings import Settings
from tests.support import Workers, register

pytest.importorskip("ray.rllib", reason="the rllib extra is not installed")

WAIT_S = 60


def test_an_rllib_checkpoint_serves_greedy_actions(
    settings: Settings, client: Client, workers: Workers, tmp_path: Path
) -> None:
    import gymnasium
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )

    from tests.adapters.pipelines import t_rllib

    env = gymnasium.make("CartPole-v1")
    torch.manual_seed(0)
    module = DefaultPPOTorchRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"fcnet_hiddens": [16], "vf_share_layers": False},
        catalog_class=PPOCatalog,
        inference_only=True,
    )
    # where Algorithm.save() puts the policy's module
    module.save_to_path(tmp_path / "learner_group" / "learner" / "rl_module" / "default_policy")
    register(settings, t_rllib)
    workers.start("t_rllib", BATCHLINE_TEST_RLLIB=str(tmp_path))

    observations = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    jobs = client.submit_many("t_rllib", list(observations))
    with torch.no_grad():
        logits = module.forward_inference({"obs": torch.from_numpy(observations)})
    expected = logits["action_dist_inputs"].argmax(dim=-1).tolist()
    assert [job.result(timeout=WAIT_S) for job in jobs] == expected
