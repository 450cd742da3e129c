"""A pipeline for the dead-letter and dashboard tests (loaded by workers through
BATCHLINE_PIPELINES): ``t_poison``, a ``model`` stage handing to a ``format`` stage.

``model`` runs batches of one. An item ``{"x": int, "poison": true}`` SIGKILLs its worker while
the key :data:`POISONED` exists in the test server (the bug), and runs like any other once it is
deleted (the fix): dead-lettered, then requeued, it can end done. ``"sleep": s`` makes the model
take ``s`` seconds on the item. Every item ``model`` starts is recorded in ``test:seen:<stage>``
(see :mod:`tests.pipelines`).
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from pipelines.dsl import Pipeline, stage
from tests.pipelines import Recorded, record
from workers.batching import batch

if TYPE_CHECKING:
    from queueing.settings import Settings
    from tests.support import Workers

POISONED = "test:poisoned"
STAGES = ("t_poison.model", "t_poison.format")


class PoisonModel(Recorded):
    stage_name = "t_poison.model"

    @batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        poisoned = self.redis is not None and self.redis.exists(POISONED)
        if poisoned and any(item.get("poison") for item in items):
            record(self.stage_name, items, self.redis)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.run(items)


@batch(max_batch_size=8, batch_wait_timeout_s=0.005)
def format_output(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, "formatted": True} for item in items]


# The poison stage comes first: with max_deliveries=1, a crash dead-letters every item started
# when it happens, and a poison item met first (submitted first) is then the only one started.
t_poison = Pipeline(
    "t_poison",
    stage(PoisonModel, name="model"),
    stage(format_output, name="format"),
    example={"x": 1},
)


def dead_letter_poison(workers: Workers, settings: Settings, poisoned: int) -> None:
    """Let a worker (consumer ``w``) die on each of ``poisoned`` queued poison items (the
    poison must be on: :data:`POISONED` set). The next start of ``w`` re-reads what it held
    and, with ``max_deliveries=1``, dead-letters what it died on."""
    from tests.support import wait_exit

    for _ in range(poisoned):
        wait_exit(workers.start("t_poison", name="w", settings=settings), 30, "poisoned worker")
