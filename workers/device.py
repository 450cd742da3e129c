"""Where models run: ``auto`` picks CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import importlib.util
import os
import sys

from queueing.errors import ConfigError


def resolve_device(setting: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; explicit names are checked."""
    setting = setting.strip().lower()
    if setting == "cpu":
        return "cpu"
    has_torch = importlib.util.find_spec("torch") is not None
    cuda = False
    if has_torch:
        import torch

        cuda = torch.cuda.is_available()
    if setting == "auto":
        return "cuda" if cuda else "cpu"
    if setting.startswith("cuda"):
        if not cuda:
            raise ConfigError(f"BATCHLINE_DEVICE={setting!r}, but no CUDA device is available")
        return setting
    raise ConfigError(f"BATCHLINE_DEVICE={setting!r}: use auto, cpu, cuda or cuda:<index>")


def torch_threads(setting: int) -> int:
    """torch's intra-op threads for a worker: the setting, or (0) half the cores, at least one.

    torch's default (every core) makes a worker's small batches compete with the worker's own
    I/O thread and with Redis: measured 30-50x slower per batch on a 2-core machine."""
    return setting or max(1, (os.cpu_count() or 2) // 2)


def limit_torch_threads(count: int) -> None:
    """Apply ``count`` in the calling thread, if torch is loaded: OpenMP keeps the limit per
    thread, so each thread that runs a model must set it (the model thread's initializer)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
