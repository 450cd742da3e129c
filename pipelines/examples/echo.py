"""``echo``: the seed's batching example, ported. Each request's JSON comes back, batched."""

from __future__ import annotations

from typing import Any

from pipelines.dsl import Pipeline, stage
from workers.batching import batch


class BatchingExample:
    def __init__(self) -> None:
        self.count = 0

    # No wait: a pass-through gains nothing from bigger batches; under load, whatever is
    # waiting is still taken at once.
    @batch(max_batch_size=256, batch_wait_timeout_s=0.0)
    async def handle_batch(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            responses.append(request)
        self.count += len(requests)
        return responses


echo = Pipeline(
    "echo",
    stage(BatchingExample, name="echo"),
    example={"hello": "world"},
    description="Returns each input as it came (the seed's batching example).",
)
