"""How BatchFormer shares batches among the lanes (no Redis: the share arithmetic on its own).

A fake queue stands in for a stage's streams: it hands out as many entries as asked of each
flooded lane, so that every batch finds all of them waiting. Each batch is refreshed before it
"runs", as StageLoop does with every batch that waited in its inbox under a flood; the shares
must hold all the same, each batch charged once, for what it holds."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
import redis

from queueing.keys import new_job_id
from queueing.lanes import LANES
from queueing.message import Message
from queueing.streams import Delivery
from workers.batching import BatchConfig
from workers.forming import BatchFormer


class FloodQueue:
    """Stage streams where ``flooded`` lanes always have as many entries as a read asks for."""

    def __init__(self, *flooded: str, priced: bool = False) -> None:
        self.flooded = flooded
        self.priced = priced
        self.ids = itertools.count()
        self.refreshing = False
        self.refresh_reads: list[tuple[int, tuple[str, ...]]] = []
        """The reads of refreshes: (count, lanes)."""

    async def read(
        self, count: int, block_ms: int | None, *, lanes: Iterable[str] = LANES
    ) -> list[Delivery]:
        lanes = tuple(lanes)
        if self.refreshing:
            self.refresh_reads.append((count, lanes))
        return [self._entry(lane) for lane in lanes if lane in self.flooded for _ in range(count)]

    def _entry(self, lane: str) -> Delivery:
        fields: dict[bytes, bytes] = {b"x": b"1"}
        if self.priced:
            raw = Message(new_job_id(0), b"1", 0.0).encode()
            fields = {_bytes(k): _bytes(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
        return Delivery(0, f"{next(self.ids)}-0", fields, lane=lane)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _serve(
    former: BatchFormer, queue: FloodQueue, batches: int, *, refresh: bool = True
) -> tuple[Counter[str], int]:
    """Run ``batches`` batches (each refreshed before it runs): items served per lane, and the
    most entries the carry held."""

    async def go() -> tuple[Counter[str], int]:
        served: Counter[str] = Counter()
        most = 0
        for _ in range(batches):
            batch = await former.read(queue, None)
            if refresh:
                queue.refreshing = True
                batch = await former.refresh(queue, batch)
                queue.refreshing = False
            for delivery in batch:
                served[delivery.lane] += 1
                former.held.pop(delivery.key)
            most = max(most, len(former.carry))
        return served, most

    return asyncio.run(go())


def _former(**config: Any) -> BatchFormer:
    return BatchFormer(BatchConfig(batch_wait_timeout_s=0, **config), {})


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize(("flood", "share"), [("high", 1 / 9), ("normal", 1 / 5)])
def test_small_batches_refreshed_every_time_keep_the_low_lanes_share(
    size: int, flood: str, share: float
) -> None:
    """Batches of 1 or 2 under a flood, each refreshed: the low lane gets its weighted share
    (1 of 9 slots against high, 1 of 5 against normal), to within a slot or two."""
    served, _ = _serve(_former(max_batch_size=size), FloodQueue(flood, "low"), 900)
    total = 900 * size
    assert sum(served.values()) == total
    assert abs(served["low"] - total * share) <= 2, served


def test_cost_bounded_batches_keep_every_lanes_share() -> None:
    """A cost bound cuts each batch to 2 of its 16 slots: the two taken are shared by weight
    too, so over many batches high, normal and low get 8/13, 4/13 and 1/13 of the items."""
    former = _former(max_batch_size=8, batch_size_fn=lambda xs: 4.0 * len(xs), max_batch_items=16)
    served, _ = _serve(former, FloodQueue(*LANES, priced=True), 650)
    assert sum(served.values()) == 1300
    for lane, weight in zip(LANES, (8, 4, 1), strict=True):
        assert abs(served[lane] - 1300 * weight / 13) <= 2, served


def test_refresh_reads_only_what_can_displace_and_the_carry_stays_bounded() -> None:
    """Under a flood of both lanes, batches of 32 refreshed every time: the carry never holds
    more than two batches' worth, and a refresh reads no more entries than the batch holds of
    the lanes they could displace."""
    former = _former(max_batch_size=32)
    queue = FloodQueue("high", "low")
    served, most = _serve(former, queue, 300)
    assert abs(served["low"] - 300 * 32 / 9) <= 2, served
    assert most <= 2 * 32, most
    assert len(former.held) == len(former.carry)
    # (a batch holds 28 or 29 high entries: a refresh asks for the 3 or 4 low ones' worth,
    # and only of the lanes that the carry holds less of)
    assert queue.refresh_reads, "no refresh read anything"
    assert all(count <= 4 for count, _ in queue.refresh_reads), queue.refresh_reads


def test_a_refresh_charges_a_batch_once() -> None:
    """The same flood with and without refreshes: the same batches, the same credit."""
    plain = _former(max_batch_size=3)
    refreshed = _former(max_batch_size=3)
    a, _ = _serve(plain, FloodQueue("high", "normal", "low"), 130, refresh=False)
    b, _ = _serve(refreshed, FloodQueue("high", "normal", "low"), 130)
    assert a == b
    assert plain.shares.credit == pytest.approx(refreshed.shares.credit)
    assert all(abs(credit) < 1.5 for credit in refreshed.shares.credit.values())


def test_displaced_entries_can_be_taken_while_a_read_blocks() -> None:
    """A refresh displaces entries into the carry while the next read waits (blocked) for new
    ones it cannot see: the former says so (``blocked``), and hands them over as a batch."""

    class Quiet(FloodQueue):
        def __init__(self) -> None:
            super().__init__("normal")
            self.block = asyncio.Event()

        async def read(
            self, count: int, block_ms: int | None, *, lanes: Iterable[str] = LANES
        ) -> list[Delivery]:
            if block_ms is not None and self.flooded == ():
                await self.block.wait()
                return []
            return await super().read(count, block_ms, lanes=lanes)

    async def go() -> None:
        former = _former(max_batch_size=4)
        queue = Quiet()
        batch = await former.read(queue, 1000)
        assert [d.lane for d in batch] == ["normal"] * 4
        queue.flooded = ()
        reading = asyncio.create_task(former.read(queue, 1000))
        await asyncio.sleep(0)
        assert former.blocked
        queue.flooded = ("high",)  # high entries come: the refresh reads them first
        batch = await former.refresh(queue, batch)
        assert Counter(d.lane for d in batch) == {"high": 3, "normal": 1}
        queue.flooded = ()
        # (what it read beyond its share of the batch, and the normal entries displaced)
        assert Counter(d.lane for d in former.take_carried()) == {"high": 1, "normal": 3}
        assert former.carry == []
        queue.block.set()
        assert await reading == []
        assert not former.blocked

    asyncio.run(go())


class FailingAfter:
    """``FloodQueue`` that hands out one entry per lane and read, and whose reads fail (Redis
    unreachable) after the first ``fine``."""

    def __init__(self, queue: FloodQueue, fine: int) -> None:
        self.queue = queue
        self.fine = fine

    async def read(
        self, count: int, block_ms: int | None, *, lanes: Iterable[str] = LANES
    ) -> list[Delivery]:
        if self.fine <= 0:
            raise redis.ConnectionError("Redis is unreachable")
        self.fine -= 1
        return await self.queue.read(1, block_ms, lanes=lanes)


def test_a_read_that_fails_midway_keeps_what_it_had_in_hand() -> None:
    """Redis goes away while a batch is being read (the loop reads again once it is back):
    the entries carried into that read, and those it read before failing, are carried to the
    next (held meanwhile), not dropped: dropped, carried ones stayed held and touched by every
    heartbeat, so that no worker would ever run them."""
    flood = FloodQueue("high", "low")
    former = BatchFormer(BatchConfig(max_batch_size=4, batch_wait_timeout_s=0.05), {})

    async def go() -> None:
        # (its first read brings one entry of each lane; the wait's next read fails)
        await former.read(FailingAfter(flood, 1), None)

    with pytest.raises(redis.ConnectionError):
        asyncio.run(go())
    in_hand = list(former.carry)
    assert in_hand, "the entries the failed read had in hand were dropped"
    assert all(former.held[delivery.key] is delivery for delivery in in_hand)

    async def again() -> list[Delivery]:
        with pytest.raises(redis.ConnectionError):
            await former.read(FailingAfter(flood, 0), None)
        assert former.carry == in_hand, "a read failing at once dropped the carried entries"
        return await former.read(flood, None)

    batch = asyncio.run(again())
    kept = {delivery.key for delivery in [*batch, *former.carry]}
    assert {delivery.key for delivery in in_hand} <= kept
