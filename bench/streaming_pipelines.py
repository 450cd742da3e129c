"""Pipelines of the streaming scenarios (``bench.scenarios_streaming``; workers load them with
``BATCHLINE_PIPELINES=bench.streaming_pipelines``): the ``generate`` example's toy token model
(:class:`~pipelines.examples.generate.TokenModel`), made to cost what a device step costs: each
step sleeps ``STEP_S`` on top of the model's own (small) numpy work, whatever the batch size (a
GPU decoding step barely depends on how many sequences it holds). ``MAX_RUNNING`` sequences at
a time, each input ``{"prompt": str, "max_tokens": n}``:

- ``gen_static``: a generator handler, static batches: a batch steps until its longest item
  is done (the others' places stay empty meanwhile);
- ``gen_refill``: a continuous step handler: an item that is done leaves, a waiting one takes
  its place at the next step.
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.dsl import Pipeline, stage
from pipelines.examples.generate import VOCAB, Sequence, TokenModel
from workers.batching import batch
from workers.streaming import Slot

STEP_S = 0.004
MAX_RUNNING = 8


class StaticGenerator:
    def __init__(self) -> None:
        self.model = TokenModel()

    @batch(max_batch_size=MAX_RUNNING)
    def generate(self, items: list[dict[str, Any]]) -> Any:
        sequences = [self.model.start(item["prompt"], item["max_tokens"]) for item in items]
        while running := [s for s in sequences if s.left > 0]:
            time.sleep(STEP_S)
            tokens = dict(zip(map(id, running), self.model.step(running), strict=True))
            yield [VOCAB[tokens[id(s)]] if id(s) in tokens else StopIteration for s in sequences]


class RefillGenerator:
    def __init__(self) -> None:
        self.model = TokenModel()

    @batch(max_batch_size=MAX_RUNNING, continuous=True)
    def generate(self, slots: list[Slot]) -> list[Any]:
        for slot in slots:
            if slot.state is None:
                slot.state = self.model.start(slot.input["prompt"], slot.input["max_tokens"])
        running: list[Sequence] = [s.state for s in slots if s.state.left > 0]
        tokens: dict[int, int] = {}
        if running:
            time.sleep(STEP_S)
            tokens = dict(zip(map(id, running), self.model.step(running), strict=True))
        return [
            VOCAB[tokens[id(s.state)]] if id(s.state) in tokens else StopIteration for s in slots
        ]


gen_static = Pipeline("gen_static", stage(StaticGenerator, name="model"))
gen_refill = Pipeline("gen_refill", stage(RefillGenerator, name="model"))
