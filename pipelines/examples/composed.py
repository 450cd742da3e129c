"""``composed``: the seed's conditional composition, as two stream stages.

Ray's ``snippet_model_composition.py`` calls ``model_one``, and only when its score is above
0.5 calls ``model_two``; either way it answers with the score that decided the route, model
one's (``{"model_used": 2, "score": score}``: model two runs, its output is not the answer).
Here ``model_one`` is a routing stage: it returns the result itself (``{"model_used": 1, ...}``)
or a ``Route`` that sends the item, with its score, on to ``model_two``. The seed's models
return random scores; these score deterministically (a logistic function of the input's mean),
so results can be checked.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.dsl import Pipeline, stage
from workers.batching import batch
from workers.stage import Route


def _score(data: list[float], weight: float, bias: float) -> float:
    mean = sum(data) / len(data) if data else 0.0
    return 1.0 / (1.0 + math.exp(-(weight * mean + bias)))


@batch(max_batch_size=128, batch_wait_timeout_s=0.002)
async def model_one(requests: list[dict[str, Any]]) -> list[Any]:
    outputs: list[Any] = []
    for request in requests:
        score = _score(request["data"], weight=1.0, bias=0.0)
        if score > 0.5:
            outputs.append(Route("model_two", {"data": request["data"], "score": score}))
        else:
            outputs.append({"model_used": 1, "score": score})
    return outputs


@batch(max_batch_size=128, batch_wait_timeout_s=0.002)
async def model_two(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # As in the seed: model two runs on the data, and the answer is the score that routed
    # the request here (model one's), not model two's own.
    for request in requests:
        _score(request["data"], weight=0.5, bias=0.25)
    return [{"model_used": 2, "score": request["score"]} for request in requests]


composed = Pipeline(
    "composed",
    stage(model_one, routes=["model_two"]),
    model_two,
    input_schema={
        "type": "object",
        "properties": {"data": {"type": "array", "items": {"type": "number"}, "minItems": 1}},
        "required": ["data"],
    },
    example={"data": [0.5, 1.5, 2.0]},
    description="The seed's conditional composition: model_two runs only when model_one scores > 0.5.",
)
