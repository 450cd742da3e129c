"""The functions the rq baselines enqueue: what a user would write to serve the same models
with rq, one job per request. The model is built once per worker process, on first use (a
module-level lazy global), with the same weights and device as batchline's ``mlp`` stage."""

from __future__ import annotations

from typing import Any

_model: Any = None
_device: str = "cpu"


def echo(value: Any) -> Any:
    return value


def load_model() -> Any:
    """The MLP, built on first call (a worker that forks per job calls this before forking)."""
    global _model, _device
    if _model is None:
        from pipelines.examples.mlp import build_mlp
        from queueing.settings import Settings
        from workers.adapters.torch import prepare
        from workers.device import resolve_device

        _device = resolve_device(Settings.from_env().device)
        _model = prepare(build_mlp(), _device)
    return _model


def classify(features: list[float]) -> dict[str, Any]:
    """One request: 16 floats -> ``{"label": int, "probs": [4 floats]}``, like ``mlp``."""
    import torch

    model = load_model()
    with torch.inference_mode():
        probs = model(torch.tensor([features], dtype=torch.float32, device=_device)).softmax(-1)
        row = probs[0].cpu().tolist()
    return {"label": int(probs[0].argmax().item()), "probs": row}
