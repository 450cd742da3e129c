"""Adaptive batch wait (``batch_wait_timeout_s="auto"``): wait for more items only while waiting
pays.

Two estimates, both from the worker's own observations:

- :class:`CostModel`: what one batch of ``n`` costs, ``fixed + per_item * n`` seconds, an
  exponentially weighted least-squares fit of the handler's measured batch times (recent
  batches count most, so a model that warms up or a device that slows down is followed);
- :class:`ArrivalRate`: items per second arriving, decayed with a short half-life (a step in
  the load shows within a fraction of a second).

The rule (:meth:`AdaptiveWait.wait_left`): with ``n`` items in hand, the oldest ``age`` seconds
old, waiting ``d`` more seconds delays those ``n`` items by ``d`` each, and gains the ``r*d``
items that arrive meanwhile a place in this batch instead of the next one, saving each about
one fixed cost. Waiting pays while ``r*d*(fixed - d) > n*d*(1 + per_item*r)``, that is while
the wait so far is under ``fixed - n/r - n*per_item``. So a light load (``n/r`` large: items
come one at a time) never waits, and a heavy one waits at most about one fixed cost. A worker
reads its next batch while the handler runs the current one: until that is expected to end
(:meth:`AdaptiveWait.running`), gathering more delays no one, so it waits at least that long.
A latency budget (``max_latency_ms``) stops the wait once the oldest item's age plus the
batch's expected cost would pass it; no wait lasts more than :data:`AUTO_CAP_S`.
"""

from __future__ import annotations

import math
import time

AUTO_CAP_S = 0.05
"""Longest an adaptive wait lasts without a latency budget, whatever the fit says."""
WARM_UP_BATCHES = 4
"""Batches timed before the fit is trusted (until then: no waiting, as with a wait of 0)."""


class CostModel:
    """Exponentially weighted least squares of ``seconds = fixed + per_item * n``."""

    def __init__(self, forget: float = 0.95) -> None:
        self.forget = forget
        self.samples = 0
        self._w = self._n = self._nn = self._y = self._ny = 0.0

    def observe(self, n: int, seconds: float) -> None:
        f = self.forget
        self._w = self._w * f + 1.0
        self._n = self._n * f + n
        self._nn = self._nn * f + n * n
        self._y = self._y * f + seconds
        self._ny = self._ny * f + n * seconds
        self.samples += 1

    @property
    def per_item(self) -> float:
        if self._w <= 0:
            return 0.0
        spread = self._w * self._nn - self._n * self._n
        if spread <= 1e-9 * max(1.0, self._w * self._nn):
            # Every batch had the same size: the cost cannot be split; charge it as fixed.
            return 0.0
        return max(0.0, (self._w * self._ny - self._n * self._y) / spread)

    @property
    def fixed(self) -> float:
        if self._w <= 0:
            return 0.0
        return max(0.0, (self._y - self.per_item * self._n) / self._w)

    def cost(self, n: int) -> float:
        """Expected seconds for a batch of ``n``."""
        return self.fixed + self.per_item * n


class ArrivalRate:
    """Items per second, exponentially decayed with half-life ``half_life_s``."""

    def __init__(self, half_life_s: float = 0.1) -> None:
        self.tau = half_life_s / math.log(2)
        self._count = 0.0
        self._span = 0.0
        self._last: float | None = None

    def arrived(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last is not None:
            weight = math.exp(-(now - self._last) / self.tau)
            self._count *= weight
            self._span = self._span * weight + self.tau * (1 - weight)
        self._last = now
        self._count += n

    def rate(self, now: float | None = None) -> float:
        """The current estimate (an idle spell since the last arrival lowers it)."""
        if self._last is None:
            return 0.0
        now = time.monotonic() if now is None else now
        weight = math.exp(-max(0.0, now - self._last) / self.tau)
        span = self._span * weight + self.tau * (1 - weight)
        if span <= 1e-6:
            return 0.0
        return self._count * weight / span


class AdaptiveWait:
    """The adaptive wait of one batcher: feed it arrivals and batch timings; ask how much
    longer a partial batch should wait."""

    def __init__(self, max_latency_ms: float | None = None) -> None:
        self.max_latency_s = None if max_latency_ms is None else max_latency_ms / 1000
        self.cost = CostModel()
        self.arrivals = ArrivalRate()
        self.busy_until = 0.0
        """When the batch running in the handler is expected to end (0: none runs)."""

    def arrived(self, n: int, now: float | None = None) -> None:
        if n:
            self.arrivals.arrived(n, now)

    def running(self, n: int, now: float | None = None) -> None:
        """A batch of ``n`` items starts in the handler."""
        if self.cost.samples >= WARM_UP_BATCHES:
            now = time.monotonic() if now is None else now
            self.busy_until = now + self.cost.cost(n)

    def observe(self, n: int, seconds: float) -> None:
        """One batch of ``n`` items took ``seconds`` in the handler (it is free again)."""
        self.busy_until = 0.0
        if n > 0 and seconds >= 0:
            self.cost.observe(n, seconds)

    def wait_left(
        self, n: int, age_s: float, now: float | None = None, *, behind: bool = False
    ) -> float:
        """How much longer a batch of ``n`` items, the oldest ``age_s`` old, should wait for
        more (0: run it now). ``behind``: another batch is queued for the handler ahead of
        this one, so this one cannot start before the running batch ends."""
        if n <= 0 or self.cost.samples < WARM_UP_BATCHES:
            return 0.0
        now = time.monotonic() if now is None else now
        rate = self.arrivals.rate(now)
        if rate <= 0:
            return 0.0
        fixed, per_item = self.cost.fixed, self.cost.per_item
        worth = fixed - n / rate - n * per_item
        # While the handler runs another batch this one could not start anyway: gathering
        # more until it ends delays no one.
        busy = self.busy_until - now if behind else 0.0
        left = min(max(worth - age_s, busy), AUTO_CAP_S - age_s)
        if self.max_latency_s is not None:
            left = min(left, self.max_latency_s - age_s - self.cost.cost(n))
        return max(0.0, left)

    def busy_left(self, now: float | None = None) -> float:
        """How much longer the running batch is expected to take (0: none runs)."""
        now = time.monotonic() if now is None else now
        return max(0.0, self.busy_until - now)

    def describe(self) -> dict[str, float]:
        """The current fit and rate (for logs and the bench)."""
        return {
            "fixed_ms": self.cost.fixed * 1000,
            "per_item_ms": self.cost.per_item * 1000,
            "rate_per_s": self.arrivals.rate(),
        }
