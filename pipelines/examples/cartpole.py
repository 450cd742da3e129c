"""``cartpole``: a torch policy for Gymnasium's CartPole-v1, served with
:class:`~workers.adapters.rl.TorchPolicy`, and a client that plays an episode through it.

The policy is linear (4 observations -> 2 action logits). The worker trains it at setup with
the cross-entropy method (fixed seed; a fraction of a second) until it balances the pole for
the full 500 steps.

Input: one observation (4 numbers; send the numpy array that ``env.step`` returns).
Output: the action, 0 (push left) or 1 (push right).

Play an episode against a running batchline (``REDIS_URL``)::

    python -m pipelines.examples.cartpole
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.dsl import Pipeline, stage
from queueing.message import TENSOR_KEY
from workers.adapters.rl import TorchPolicy

if TYPE_CHECKING:
    import torch

    from queueing.client import Client

ENV = "CartPole-v1"
SEED = 0


def train_policy(seed: int = SEED, iterations: int = 50) -> torch.nn.Module:
    """A linear policy trained with the cross-entropy method: sample weights around a mean,
    keep the best episodes' weights, refit; stop once it holds the pole in 5 test episodes."""
    import gymnasium
    import numpy as np
    import torch

    env = gymnasium.make(ENV)
    rng = np.random.default_rng(seed)

    def episode(w: Any, episode_seed: int) -> float:
        obs, _ = env.reset(seed=episode_seed)
        total = 0.0
        while True:
            action = int((w[:8].reshape(2, 4) @ obs + w[8:]).argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                return total

    mean, std = np.zeros(10), np.ones(10)
    for _ in range(iterations):
        population = mean + std * rng.standard_normal((24, 10))
        scores = [episode(w, int(rng.integers(2**31))) for w in population]
        elite = population[np.argsort(scores)[-5:]]
        mean, std = elite.mean(axis=0), elite.std(axis=0) + 0.05
        if all(episode(mean, 10_000 + k) >= 500 for k in range(5)):
            break
    env.close()
    policy = torch.nn.Linear(4, 2)
    with torch.no_grad():
        policy.weight.copy_(torch.tensor(mean[:8].reshape(2, 4), dtype=torch.float32))
        policy.bias.copy_(torch.tensor(mean[8:], dtype=torch.float32))
    return policy


class CartPolePolicy(TorchPolicy):
    env = ENV
    max_batch_size = 256

    def build(self) -> torch.nn.Module:
        return train_policy()


def play_episode(client: Client, *, seed: int = 0, pipeline: str = "cartpole") -> float:
    """Play one episode, asking batchline for every action; returns the episode's return."""
    import gymnasium

    env = gymnasium.make(ENV)
    try:
        obs, _ = env.reset(seed=seed)
        total = 0.0
        while True:
            action = client.submit(pipeline, obs).result(timeout=30)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                return total
    finally:
        env.close()


cartpole = Pipeline(
    "cartpole",
    stage(CartPolePolicy, name="act"),
    input_schema={
        "oneOf": [
            {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
            {"type": "object", "required": [TENSOR_KEY], "description": "a tensor document"},
        ]
    },
    example=[0.01, -0.02, 0.03, 0.04],
    description="A CartPole-v1 policy (torch, trained at worker start); one action per step.",
)


if __name__ == "__main__":
    from queueing.client import Client

    with Client() as client:
        print(f"episode return: {play_episode(client):.0f}")
