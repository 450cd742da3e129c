"""Stopping a task that absorbs a cancellation (what made a burst worker hang after its work)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from queueing.tasks import cancel_and_wait


async def _absorbs_the_first_cancel(started: asyncio.Event) -> None:
    started.set()
    # (as a library that turns a cancellation into an error it handles would)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)


def test_a_task_that_absorbs_a_cancel_is_asked_again_until_it_ends() -> None:
    async def main() -> bool:
        started = asyncio.Event()
        task = asyncio.create_task(_absorbs_the_first_cancel(started))
        await started.wait()
        await asyncio.wait_for(cancel_and_wait(task), 10)
        return task.cancelled()

    assert asyncio.run(main())


def test_what_the_task_raised_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> None:
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait(task)

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())


def test_every_task_is_stopped_before_one_that_failed_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> asyncio.Task[None]:
        started = asyncio.Event()
        failed = asyncio.create_task(fails())
        other = asyncio.create_task(_absorbs_the_first_cancel(started))
        await started.wait()
        with pytest.raises(ValueError, match="boom"):
            await asyncio.wait_for(cancel_and_wait(failed, other), 10)
        return other

    assert asyncio.run(main()).cancelled()
