"""PyTorch helpers: stack a batch of JSON inputs into one tensor, split outputs back per item.

Worker threads run sync handlers under ``torch.inference_mode()`` already; models built here
are put in eval mode with gradients off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def prepare(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """Move ``module`` to ``device``, in eval mode, with no gradient state."""
    module = module.to(device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def stack(values: Sequence[Any], device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One tensor from a batch of equally shaped nested lists (ValueError names a bad item)."""
    try:
        return torch.tensor(values, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"inputs do not stack into one {dtype} tensor: {exc}") from exc


def unstack(tensor: torch.Tensor) -> list[Any]:
    """Per-item Python values (lists / numbers) from a batch tensor."""
    result: list[Any] = tensor.detach().cpu().tolist()
    return result
