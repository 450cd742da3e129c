"""A plain FastAPI app that runs the ``mlp`` example's model inline, one request at a time (no
queue, no batching): what ``http-mlp-sync`` must beat.

``python -m bench.mlp_app --port P [--log-level warning]`` serves it as :mod:`bench.hello_app`
is served (``uvicorn.run`` with ``batchline web``'s arguments, one process).

The model is the example's (:func:`pipelines.examples.mlp.build_mlp`: same seed, same
weights), prepared as the worker prepares it (eval mode, no gradients, on the device
``BATCHLINE_DEVICE`` resolves to, torch intra-op threads limited as a worker limits them),
built once at startup. ``POST /v1/pipelines/mlp`` takes the gateway's body ``{"input": [16
numbers]}`` (a pydantic model checks it) and answers ``{"result": {"label": ..., "probs":
[...]}}``, the model run in the handler itself (an ``async`` route: on the event loop, no
thread hand-off) under ``torch.inference_mode``. ``GET /healthz`` answers once the model is
loaded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from bench.hello_app import serve
from pipelines.examples.mlp import FEATURES, build_mlp

model: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    from workers.adapters.torch import prepare
    from workers.device import limit_torch_threads, resolve_device, torch_threads

    limit_torch_threads(torch_threads(int(os.environ.get("BATCHLINE_TORCH_THREADS") or 0)))
    device = resolve_device(os.environ.get("BATCHLINE_DEVICE") or "auto")
    model["device"] = device
    model["net"] = prepare(build_mlp(), device)
    yield


app = FastAPI(title="mlp-inline", lifespan=lifespan)


class Body(BaseModel):
    input: list[float] = Field(min_length=FEATURES, max_length=FEATURES)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/pipelines/mlp")
async def classify(body: Body) -> dict[str, Any]:
    import torch

    from workers.adapters.torch import stack

    with torch.inference_mode():
        probs = model["net"](stack([body.input], model["device"])).softmax(dim=-1)[0]
    return {"result": {"label": int(probs.argmax()), "probs": probs.cpu().tolist()}}


def main() -> None:
    serve("bench.mlp_app:app", "python -m bench.mlp_app")


if __name__ == "__main__":
    main()
