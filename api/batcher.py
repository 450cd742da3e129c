"""Coalescing submits: the requests that arrive while one SUBMIT is on its way share the next
one, so the gateway sends one script call per batch of requests, not one per request (the
mirror of the worker's batching).

A request never waits for a batch to fill: with nothing in flight its submit goes out on the
next turn of the event loop (so a lone request costs one round trip, as before); while a call
is in flight, new requests gather and go out together as soon as it returns. Each request stays
all or none (see :class:`~queueing.client.core.SubmitPlan`); one request's error (a conflict,
a full queue) is its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from queueing.client import AsyncClient, SubmitPlan
from queueing.registry import PipelineSpec


class SubmitBatcher:
    """One per gateway process."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._plan: SubmitPlan | None = None
        self._waiting: list[asyncio.Future[list[tuple[str, bool]]]] = []
        self._in_flight: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    async def submit(
        self,
        spec: PipelineSpec,
        inputs: Sequence[Any],
        *,
        timeout_s: float | None,
        idempotency_keys: Sequence[str | None] | None,
        owner: str | None,
        result_ttl_s: float | None = None,
        webhook: str | None = None,
        priority: str | None = None,
    ) -> list[tuple[str, bool]]:
        """Queue one request's inputs; each job's id and whether this request created it.
        ValueError for bad arguments; the request's own BatchlineError otherwise."""
        if self._plan is None:
            self._plan = SubmitPlan(self.client.core)
        self._plan.add(
            spec,
            inputs,
            timeout_s=timeout_s,
            idempotency_keys=idempotency_keys,
            owner=owner,
            result_ttl_s=result_ttl_s,
            webhook=webhook,
            priority=priority,
        )
        future: asyncio.Future[list[tuple[str, bool]]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._in_flight is None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._plan is None or self._in_flight is not None:
            return
        plan, waiting = self._plan, self._waiting
        self._plan, self._waiting = None, []
        self._in_flight = asyncio.create_task(self._send(plan, waiting), name="submit-batch")

    async def _send(
        self, plan: SubmitPlan, waiting: list[asyncio.Future[list[tuple[str, bool]]]]
    ) -> None:
        try:
            results = await self.client.send(plan)
        except Exception as exc:  # the whole call failed: every request in it did
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
        else:
            for future, result in zip(waiting, results, strict=True):
                if future.done():  # its request was cancelled (the client went away)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight = None
            self._flush()

    async def close(self) -> None:
        """Wait for the call in flight (its requests are accepted: answer them)."""
        while self._in_flight is not None:
            await asyncio.shield(self._in_flight)
