"""PyTorch: serve an ``nn.Module``, a TorchScript file, a ``torch.export`` program, or a
state_dict file plus the code that builds the module, with one forward pass per batch.

    class Classifier(TorchModel):
        max_batch_size = 128
        weights = "/models/cnn.pt"      # a state_dict (torch.save(model.state_dict(), ...))
        half = True                     # float16 on a GPU; ignored on the CPU

        def build(self) -> torch.nn.Module:
            return CNN()

Sources, one per class: ``build()`` alone (weights made in code), ``weights`` + ``build()``,
``torchscript = "model.ts"`` or ``exported = "model.pt2"`` (``torch.export.save`` of a program
exported with a dynamic batch dimension). The module is moved to the worker's device (CUDA
when there is one), put in eval mode with gradients off; the worker runs every batch under
``torch.inference_mode()``. Inputs are stacked into one tensor of ``dtype``; outputs (a
tensor, or a dict / tuple of them) are split per item, as lists or as tensors (see
:class:`~workers.adapters.base.ModelStage`).

Also: :func:`prepare`, :func:`stack`, :func:`unstack`, for hand-written stages.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from queueing.errors import ConfigError
from workers.adapters.base import ModelStage, as_numpy, map_arrays, stack_arrays

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class TorchModel(ModelStage):
    """A batched stage around a torch module; set one source (see the module doc)."""

    extras: ClassVar[tuple[str, ...]] = ("torch",)
    weights: ClassVar[PathLike | None] = None
    """A state_dict file, loaded with ``weights_only=True`` into the module ``build()`` makes."""
    torchscript: ClassVar[PathLike | None] = None
    """A TorchScript file (``torch.jit.save``)."""
    exported: ClassVar[PathLike | None] = None
    """A ``torch.export`` program (``torch.export.save``), exported with a dynamic batch dim."""
    half: ClassVar[bool] = False
    """Run in float16 on a GPU (inputs cast to it, floating outputs back to float32)."""
    use_half = False
    """Whether this instance runs in float16 (``half`` and a GPU)."""

    def build(self) -> torch.nn.Module:
        """The module (its weights loaded from ``weights`` afterwards, if that is set)."""
        raise NotImplementedError

    def load(self, device: str) -> Any:
        import torch

        files = [n for n in ("weights", "torchscript", "exported") if getattr(self, n) is not None]
        builds = type(self).build is not TorchModel.build
        if not (
            (builds and files in ([], ["weights"]))
            or (not builds and files in (["torchscript"], ["exported"]))
        ):
            raise ConfigError(
                f"{type(self).__name__}: give one source of the model: build(), weights with "
                f"build(), torchscript, or exported (got build()={builds}, files={files})"
            )
        module: Any
        if self.torchscript is not None:
            with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated
                warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated")
                path = os.fspath(self.torchscript)
                module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
        elif self.exported is not None:
            module = torch.export.load(os.fspath(self.exported)).module()
        else:
            module = self.build()
            if self.weights is not None:
                state = torch.load(os.fspath(self.weights), map_location="cpu", weights_only=True)
                module.load_state_dict(state)
        self.use_half = self.half and device.startswith("cuda")
        if self.half and not self.use_half:
            log.info(
                "%s: half precision needs a GPU; running float32 on %s", type(self).__name__, device
            )
        module = prepare(module, device, exported=self.exported is not None)
        return module.half() if self.use_half else module

    def stack(self, inputs: list[Any]) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(stack_arrays(inputs, self.dtype)).to(self.device)
        return tensor.half() if self.use_half and tensor.is_floating_point() else tensor

    def to_numpy(self, outputs: Any) -> Any:
        return map_arrays(as_numpy, outputs)


def prepare(module: Any, device: str, *, exported: bool = False) -> Any:
    """Move ``module`` to ``device``, in eval mode (a ``torch.export`` module has no eval mode:
    it runs as it was exported), with no gradient state."""
    module = module.to(device)
    if not exported:
        module = module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def stack(values: Sequence[Any], device: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor from a batch of equally shaped nested lists (ValueError names a bad item)."""
    import torch

    dtype = dtype or torch.float32
    try:
        return torch.tensor(values, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"inputs do not stack into one {dtype} tensor: {exc}") from exc


def unstack(tensor: torch.Tensor) -> list[Any]:
    """Per-item Python values (lists / numbers) from a batch tensor."""
    result: list[Any] = tensor.detach().cpu().tolist()
    return result
