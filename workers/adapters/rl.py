"""RL policies: actions for batches of observations, one policy call per batch.

    class CartPolePolicy(TorchPolicy):
        env = "CartPole-v1"             # its spaces: observations checked, actions shaped
        weights = "/models/policy.pt"   # as for TorchModel: build() + weights, torchscript...

        def build(self) -> torch.nn.Module:
            return PolicyNet()          # observations -> logits (Discrete) or actions (Box)

Each item is one observation; its output is the action: an int for a ``Discrete`` space (the
arg-max of the logits, or a sample with ``deterministic = False``), a list (or tensor) clipped
to the bounds for a ``Box``. An agent steps its environment by submitting each observation.

With the ``rllib`` extra (``pip install 'batchline[rllib]'``), :class:`RLlibPolicy` serves an
RLlib checkpoint (new API stack) the same way::

    class Trained(RLlibPolicy):
        checkpoint = "/checkpoints/ppo_cartpole"   # algo.save(...) or RLModule.save_to_path(...)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from queueing.errors import ConfigError
from workers.adapters.base import required
from workers.adapters.torch import PathLike, TorchModel, prepare

if TYPE_CHECKING:
    import torch


class TorchPolicy(TorchModel):
    """A torch policy network for a Gymnasium environment (see the module doc)."""

    extras: ClassVar[tuple[str, ...]] = ("rl",)
    env: ClassVar[str | None] = None
    """The Gymnasium id of the environment (made once at setup to read its spaces)."""
    deterministic: ClassVar[bool] = True
    """Discrete actions: the arg-max (True) or a sample from the logits (False)."""
    max_batch_size: ClassVar[int] = 256

    def setup(self, device: str) -> None:
        super().setup(device)
        self.observation_space, self.action_space = spaces(required(self, "env"))

    def stack(self, inputs: list[Any]) -> torch.Tensor:
        batch = super().stack(inputs)
        expected = self.observation_space.shape
        if expected is not None and tuple(batch.shape[1:]) != tuple(expected):
            raise ValueError(
                f"observations of {self.env} have shape {list(expected)}, got {list(batch.shape[1:])}"
            )
        return batch

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return actions(self.model(batch), self.action_space, self.deterministic)


class RLlibPolicy(TorchModel):
    """An RLlib RLModule (torch) from a checkpoint: an algorithm's (``algo.save()``; its
    ``module_id`` module is served) or a module's own (``RLModule.save_to_path()``)."""

    extras: ClassVar[tuple[str, ...]] = ("rllib",)
    checkpoint: ClassVar[PathLike | None] = None
    module_id: ClassVar[str] = "default_policy"
    deterministic: ClassVar[bool] = True
    """The inference distribution's deterministic action (arg-max / mean), or a sample."""
    max_batch_size: ClassVar[int] = 256

    def load(self, device: str) -> Any:
        from ray.rllib.core.rl_module.rl_module import RLModule  # (extras checked at setup)

        path = Path(required(self, "checkpoint"))
        nested = path / "learner_group" / "learner" / "rl_module" / self.module_id
        module = RLModule.from_checkpoint(str(nested if nested.is_dir() else path))
        self.distribution = module.get_inference_action_dist_cls()
        self.action_space = module.action_space
        return prepare(module, device)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = self.model.forward_inference({"obs": batch})
        distribution = self.distribution.from_logits(outputs["action_dist_inputs"])
        if self.deterministic:
            distribution = distribution.to_deterministic()
        return clip(distribution.sample(), self.action_space)


def spaces(env_id: str) -> tuple[Any, Any]:
    """(observation space, action space) of a Gymnasium environment."""
    import gymnasium

    env = gymnasium.make(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def actions(outputs: torch.Tensor, space: Any, deterministic: bool = True) -> torch.Tensor:
    """The actions of a batch of policy outputs in ``space``: logits -> indices for a
    ``Discrete`` space, values clipped to the bounds for a ``Box``."""
    import gymnasium
    import torch

    if isinstance(space, gymnasium.spaces.Discrete):
        if deterministic:
            index = outputs.argmax(dim=-1)
        else:
            index = torch.multinomial(outputs.float().softmax(dim=-1), 1).squeeze(-1)
        return index + int(space.start)
    if isinstance(space, gymnasium.spaces.Box):
        return clip(outputs.reshape(len(outputs), *space.shape), space)
    raise ConfigError(f"action space {space} is not supported: use Discrete or Box")


def clip(values: torch.Tensor, space: Any) -> torch.Tensor:
    """Actions clipped to the bounds of a ``Box`` space (others as they are)."""
    import gymnasium
    import torch

    if not isinstance(space, gymnasium.spaces.Box):
        return values
    low = torch.as_tensor(space.low, device=values.device, dtype=values.dtype)
    high = torch.as_tensor(space.high, device=values.device, dtype=values.dtype)
    return values.clamp(low, high)
