"""How a worker forms one batch from its stage's streams: read, wait (fixed or adaptive), fill
it from the priority lanes by their weights, and cut at the count or cost bound.

With ``batch_size_fn`` the worker reads up to ``max_items`` entries at once, decodes them to
price them, and cuts the batch before the entry that would push its cost past
``max_batch_size``. The entries beyond the cut are pending on this consumer already: they are
*carried* to the next batch (first in it, in order), held and touched by heartbeats like any
entry in hand, so they are neither lost nor left for a claim after the visibility timeout.

The priority lanes (:mod:`queueing.lanes`) reuse that carry: a worker reads every lane (each
up to a batch's worth beyond what it carries of that lane), orders the entries slot by slot by
the lanes' weights (:class:`~queueing.lanes.LaneShares`), cuts the batch at its bounds,
charges the lanes for what the batch took, and carries the rest. Since the next batch is read
while the current one runs, :meth:`BatchFormer.refresh` forms a batch that waited again, just
before it goes to the model, if entries of higher lanes than its lowest came or are carried:
they take their share of it, what they displace is carried, and the batch is charged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Protocol

from queueing.errors import DecodeError
from queueing.lanes import LANES, RANK, LaneShares
from queueing.message import Message
from queueing.streams import Delivery, DeliveryKey
from workers.adaptive import AdaptiveWait
from workers.batching import BatchConfig

log = logging.getLogger(__name__)

MIN_POLL_S = 0.0005

CHARGES_KEPT = 8
"""Charges remembered for a refresh to refund: more than the batches formed and not yet run
(the one running, the one in the inbox, the one being read)."""


class _Readable(Protocol):
    async def read(
        self, count: int, block_ms: int | None, *, lanes: Iterable[str] = LANES
    ) -> list[Delivery]: ...


_UNPRICED = object()


class BatchFormer:
    """Forms a stage's batches: holds the carried entries and the adaptive wait's estimates."""

    def __init__(self, config: BatchConfig, held: MutableMapping[DeliveryKey, Delivery]) -> None:
        self.config = config
        self.held = held
        self.carry: list[Delivery] = []
        """Entries read but left out of the last batch (by its cost bound, or by the lanes'
        shares): first in their lane in the next."""
        self._carry_since = 0.0
        self._values: dict[DeliveryKey, Any] = {}
        self.shares = LaneShares()
        self._charged: dict[DeliveryKey, dict[str, float]] = {}
        """What the last batches formed were charged, by their first entry (refresh refunds
        it before forming one again)."""
        self._queued: Callable[[], int] = lambda: 0
        self.blocked = False
        """A read waits for the first entry (XREADGROUP BLOCK): it cannot see what a refresh
        carries meanwhile."""
        self.estimates = AdaptiveWait(config.max_latency_ms)
        """The adaptive wait's fit and arrival rate, fed whatever the wait (a few float
        operations per batch), so that a stage switched to "auto" live starts warm."""
        self.apply(config)

    @property
    def adaptive(self) -> AdaptiveWait | None:
        return self.estimates if self.config.adaptive else None

    def apply(self, config: BatchConfig) -> None:
        """Batch with new settings from the next batch on (live settings)."""
        self.config = config
        limit = config.max_latency_ms
        self.estimates.max_latency_s = None if limit is None else limit / 1000

    def running(self, n: int) -> None:
        """A batch of ``n`` items starts in the handler (the adaptive wait gathers more for
        free while it runs: the next batch could not start sooner)."""
        self.estimates.running(n)

    def observe(self, n: int, compute_s: float) -> None:
        """A batch of ``n`` items ran for ``compute_s`` (fits the adaptive wait's cost)."""
        self.estimates.observe(n, compute_s)

    async def read(
        self, queue: _Readable, block_ms: int | None, queued: Callable[[], int] = lambda: 0
    ) -> list[Delivery]:
        """The next batch: carried entries first, then whatever is waiting, then (when the
        batch is not closed) more for as long as the wait allows. ``queued``: how many
        batches wait for the handler ahead of this one."""
        self._queued = queued
        deliveries, self.carry = self.carry, []
        started = self._carry_since if deliveries else 0.0
        try:
            self.blocked = not deliveries and block_ms is not None
            try:
                more = await self._refill(queue, deliveries, None if deliveries else block_ms)
            finally:
                self.blocked = False
            self._arrived(more)
            deliveries += more
            if not deliveries:
                return deliveries
            started = started or time.monotonic()
            while not self._closed(deliveries):
                remaining = self._wait_left(len(deliveries), started)
                if remaining <= 0:
                    break
                # Poll rather than XREADGROUP BLOCK: a server times out blocked commands only
                # on its `hz` tick (100 ms by default), which stretches a 2 ms wait to 100 ms.
                more = await self._refill(queue, deliveries, None)
                if more:
                    self._arrived(more)
                    deliveries += more
                else:
                    await asyncio.sleep(self._pause(remaining))
        except BaseException:
            # A read that failed (Redis went away; the loop reads again once it is back) or
            # was cancelled: what it had in hand, pending on this consumer, is carried, first
            # in the next batch. Dropped, entries carried before would stay held, touched by
            # every heartbeat, so that no worker would ever claim them.
            self._hold(deliveries)
            if deliveries:
                self._carry_since = started or time.monotonic()
            self.carry = deliveries + self.carry
            raise
        self._hold(deliveries)
        return self._form(deliveries)

    async def refresh(self, queue: _Readable, batch: list[Delivery]) -> list[Delivery]:
        """``batch`` (formed earlier, while the one before ran) formed again, just before it
        runs, with the entries of lanes above its lowest that came since or are carried: they
        take their share of it, and those they displace are carried to the next batch. It is
        charged once (its first forming's charge is refunded). Only what can displace is read:
        of a lane above the batch's lowest, up to as many entries as the batch holds of lanes
        below it, less what the carry holds of that lane (none when it holds that many). No
        such lane, or nothing of it in hand: ``batch`` as it is."""
        if not batch:
            return batch
        lowest = max(RANK[delivery.lane] for delivery in batch)
        below = [sum(RANK[d.lane] > rank for d in batch) for rank in range(len(LANES))]
        carried = Counter(delivery.lane for delivery in self.carry)
        wanted = {
            lane: below[RANK[lane]] - carried[lane]
            for lane in LANES[:lowest]
            if below[RANK[lane]] > carried[lane]
        }
        more = await queue.read(max(wanted.values()), None, lanes=list(wanted)) if wanted else []
        if more:
            self._arrived(more)
            self._hold(more)
        # (taken after the read: no await between this and _form, so no entry is carried twice)
        above = [d for d in self.carry if RANK[d.lane] < lowest]
        if not more and not above:
            return batch
        pool, self.carry = [*batch, *self.carry, *more], []
        self.shares.refund(self._charged.pop(batch[0].key, {}))
        return self._form(pool)

    def take_carried(self) -> list[Delivery]:
        """A batch of the carried entries, now (when the model would otherwise wait for a
        read that cannot see them: see StageLoop._next)."""
        carried, self.carry = self.carry, []
        return self._form(carried) if carried else []

    def drain(self) -> list[list[Delivery]]:
        """The carried entries as batches (when the loop stops: they run before it ends)."""
        batches = []
        while batch := self.take_carried():
            batches.append(batch)
        return batches

    def _form(self, pool: list[Delivery]) -> list[Delivery]:
        """The batch from ``pool`` (entries in hand, in order within each lane): the lanes'
        shares slot by slot, cut at the count and cost bounds, and charged for the slots it
        took; the rest is carried."""
        ordered, waiting = self._by_shares(pool)
        size = self._take(ordered)
        batch, rest = ordered[:size], ordered[size:]
        if waiting:
            change = self.shares.charge(waiting, self.config.lane_weights, size)
            self._charged[batch[0].key] = change
            while len(self._charged) > CHARGES_KEPT:
                del self._charged[next(iter(self._charged))]
        for delivery in batch:
            self._values.pop(delivery.key, None)
        if rest and not self.carry:
            self._carry_since = time.monotonic()
        self.carry += rest  # (refresh may have carried entries meanwhile: kept)
        return batch

    def _by_shares(self, pool: list[Delivery]) -> tuple[list[Delivery], dict[str, int]]:
        """``pool`` in the order batches take it, and how many wait in each lane: the first
        ``max_items`` slot by slot (see LaneShares), then the rest. One lane (the usual case):
        as it is (and no lanes to charge)."""
        lane = pool[0].lane if pool else ""
        if all(delivery.lane == lane for delivery in pool):
            return pool, {}
        lanes: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in pool:
            lanes[delivery.lane].append(delivery)
        waiting = {lane: len(entries) for lane, entries in lanes.items()}
        ordered: list[Delivery] = []
        taken = Counter[str]()
        for lane in self.shares.order(waiting, self.config.lane_weights, self.config.max_items):
            ordered.append(lanes[lane][taken[lane]])
            taken[lane] += 1
        for lane in LANES:
            ordered += lanes[lane][taken[lane] :]
        return ordered, waiting

    async def _refill(
        self, queue: _Readable, pool: list[Delivery], block_ms: int | None
    ) -> list[Delivery]:
        """New entries for ``pool``. Of one lane and not closed (the usual case): as many as
        complete the batch, from every lane. Otherwise, in one read without blocking: of each
        lane short of a batch's worth in the pool (with a pool of one lane closed by its cost:
        of the other lanes only), up to the batch's worth of the lane that has least (so a
        lane holds less than two batches' worth)."""
        max_items = self.config.max_items
        held = Counter(delivery.lane for delivery in pool)
        if len(held) <= 1 and not self._closed(pool):
            return await queue.read(max_items - len(pool), block_ms)
        lanes = [
            lane for lane in LANES if held[lane] < max_items and (len(held) > 1 or not held[lane])
        ]
        if not lanes:
            return []
        return await queue.read(max_items - min(held[lane] for lane in lanes), None, lanes=lanes)

    def cut(self, deliveries: list[Delivery], most: int | None = None) -> list[list[Delivery]]:
        """``deliveries`` in order as batches within the count and cost bounds (and of at
        most ``most`` items): for entries recovered from a dead consumer, say."""
        batches = []
        while deliveries:
            size = self._take(deliveries[:most] if most else deliveries)
            batches.append(deliveries[:size])
            for delivery in deliveries[:size]:
                self._values.pop(delivery.key, None)
            deliveries = deliveries[size:]
        return batches

    # -- cost ----------------------------------------------------------------------------------

    def _wait_left(self, n: int, started: float) -> float:
        now = time.monotonic()
        if self.adaptive is not None:
            return self.adaptive.wait_left(n, now - started, now, behind=self._queued() > 0)
        return started + self.config.wait_s - now

    def _pause(self, remaining: float) -> float:
        """How long to sleep before reading again: while the handler runs a batch, until it
        is expected to end (one read then takes all that came meanwhile: no CPU spent on
        polls); otherwise a quarter of the wait left."""
        adaptive = self.adaptive
        busy = adaptive.busy_left() if adaptive is not None and self._queued() > 0 else 0.0
        if busy > 0:
            return min(busy, remaining)
        return max(remaining / 4, MIN_POLL_S)

    def _hold(self, deliveries: list[Delivery]) -> None:
        """Entries in hand from now on: touched by heartbeats until they are finished."""
        for delivery in deliveries:
            self.held[delivery.key] = delivery

    def _arrived(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self.estimates.arrived(len(deliveries))

    def _value(self, delivery: Delivery) -> Any:
        value = self._values.get(delivery.key, _UNPRICED)
        if value is _UNPRICED:
            try:
                value = Message.decode(delivery.fields).value()
            except DecodeError:
                value = None  # priced at nothing; the stage fails it when it runs
            self._values[delivery.key] = value
        return value

    def _priced(self, deliveries: list[Delivery]) -> list[Any]:
        return [value for d in deliveries if (value := self._value(d)) is not None]

    def _closed(self, deliveries: list[Delivery]) -> bool:
        if len(deliveries) >= self.config.max_items:
            return True
        if self.config.batch_size_fn is None or not deliveries:
            return False
        return self.config.closed(self._priced(deliveries))

    def _take(self, deliveries: list[Delivery]) -> int:
        """How many of ``deliveries`` form the batch (the undecodable ones cost nothing)."""
        if self.config.batch_size_fn is None:
            return min(len(deliveries), self.config.max_items)
        values = [self._value(d) for d in deliveries]
        priced = [v for v in values if v is not None]
        fits = self.config.take(priced)
        size = 0
        for value in values:
            if value is not None:
                if fits == 0:
                    break
                fits -= 1
            size += 1
        return max(1, min(size, self.config.max_items))
