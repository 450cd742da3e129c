"""Stopping an asyncio task for sure.

``task.cancel()`` asks once, and code the task runs can absorb that request (a library that
turns a cancellation into an error it handles, or Python 3.11's ``asyncio.timeout`` mistaking
it for its own expiry), after which an ``await task`` waits forever. That was seen: a burst
worker that had drained its streams never exited, because its heartbeat task, cancelled once,
went on beating. :func:`cancel_and_wait` asks again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

ASK_EVERY_S = 0.5
"""How long to wait for a cancelled task to end before asking it again."""


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` (each again, every :data:`ASK_EVERY_S`, until it has ended) and wait
    for all of them; then raise what the first of them raised, unless that is the
    cancellation (every task is stopped before anything is raised)."""
    pending = set(tasks)
    while pending := {task for task in pending if not task.done()}:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=ASK_EVERY_S)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            task.result()
