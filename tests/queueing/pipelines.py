"""Pipelines of the queue tests that run real workers (``BATCHLINE_PIPELINES=tests.queueing.pipelines``).

Their model notes every item it runs in the file named by ``BATCHLINE_TEST_SEEN_FILE`` (one
``x`` per line): not in Redis, which a test may stop while the model runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipelines.dsl import Pipeline, stage
from workers.batching import batch

SEEN_FILE = "BATCHLINE_TEST_SEEN_FILE"


@batch(max_batch_size=32, batch_wait_timeout_s=0.002)
def echo(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns its items, 10 ms per batch (at most 3,200 items/s: a map of a few thousand
    items lasts long enough for a test to restart the server under it)."""
    path = os.environ.get(SEEN_FILE)
    if path:
        with open(path, "a") as out:  # one append per batch
            out.write("".join(f"{item['x']}\n" for item in items))
    time.sleep(0.01)
    return items


t_restart = Pipeline("t_restart", stage(echo, name="echo"), example={"x": 1})


def seen(path: str | os.PathLike[str]) -> list[int]:
    """Every ``x`` the model ran, in order (repeats included)."""
    with open(path) as lines:
        return [int(line) for line in lines]
