"""Riding out a Redis restart: how the twin clients retry a call while Redis is unreachable.

Every call a client makes to Redis runs in a loop of attempts::

    async for attempt in self._attempts():     # (a plain ``for`` in the blocking twin)
        with attempt:
            raw = await self.redis.hgetall(key)

An attempt that meets an outage (:data:`~queueing.connection.REDIS_DOWN`: the server is down,
restarting or loading its data) is followed by another after a pause that doubles from
:data:`FIRST_PAUSE_S` up to :data:`MAX_PAUSE_S`, until ``Settings.retry_s`` have passed since
the call began; then the call raises :class:`~queueing.errors.BrokerUnavailable`. Any other
error goes to the caller at once; Redis's refusal to write at its ``maxmemory`` (``OOM ...``)
as :class:`~queueing.errors.BrokerFull`. A call that is not idempotent must know whether it is
a retry (:attr:`Attempt.retry`): SUBMIT then skips the jobs an earlier attempt queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

import redis.exceptions

from queueing.connection import REDIS_DOWN, OutageLog
from queueing.errors import BatchlineError, BrokerFull, BrokerUnavailable

log = logging.getLogger("queueing.client")

FIRST_PAUSE_S = 0.05
"""The pause after a call's first failed attempt; it doubles with every further one."""
MAX_PAUSE_S = 1.0
"""The longest pause between two attempts."""


class Attempt:
    """One attempt of a call: ``with attempt:`` keeps an outage for the loop (which retries
    it, or raises BrokerUnavailable once the time is spent); other errors pass through."""

    __slots__ = ("error", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.error: BaseException | None = None

    @property
    def retry(self) -> bool:
        """Whether an earlier attempt of this call failed (and may have run, its reply lost)."""
        return self.number > 1

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        # A BrokerUnavailable is a ConnectionError too: it means "retried enough already".
        if isinstance(exc, REDIS_DOWN) and not isinstance(exc, BatchlineError):
            self.error = exc
            return True
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            # (a script that writes is refused before it runs: none of it was done)
            raise BrokerFull("maxmemory reached") from exc
        return False


class Backoff:
    """The pauses between the attempts of one call (no I/O: the caller sleeps)."""

    __slots__ = ("_clock", "_next", "budget_s", "failures", "started")

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self.started = clock()
        self.failures = 0
        self._next = FIRST_PAUSE_S

    def pause(self, error: BaseException) -> float:
        """The pause before the next attempt, after one that failed with ``error``;
        BrokerUnavailable (from ``error``) once ``budget_s`` have passed."""
        self.failures += 1
        remaining = self.started + self.budget_s - self._clock()
        if remaining <= 0:
            if self.budget_s <= 0:
                raise BrokerUnavailable(f"Redis is unreachable: {error}") from error
            raise BrokerUnavailable(
                f"Redis is unreachable (retried for {self.budget_s:g}s, "
                f"{self.failures} attempts): {error}"
            ) from error
        pause = min(self._next, remaining)
        self._next = min(self._next * 2, MAX_PAUSE_S)
        return pause


def outage_log() -> OutageLog:
    """A client's log of its outages: once when Redis goes away, once when it is back."""
    return OutageLog(log, "batchline client")
