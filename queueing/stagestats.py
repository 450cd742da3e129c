"""What each stage did lately, for the dashboard: items per second, batch sizes, queue wait and
compute percentiles.

A worker's :class:`StageRecorder` notes each batch in memory (a few additions per batch, nothing
per item) and, at each heartbeat, appends what it noted since the last one to the stage's
``Keys.stage_stats`` stream: one XADD per heartbeat and stage, and only when it ran a batch.
The stream is capped (``MAXLEN ~ STREAM_CAP``) and each entry holds at most ``SAMPLE_CAP``
batches (a uniform sample when there were more), so memory in Redis stays bounded whatever the
load. :func:`read_recent` folds the entries of the last minutes into a :class:`StageActivity`.

Queue waits are estimated per batch from its oldest and newest item (the items in between are
taken as spread evenly): exact for a batch of one or two, and close for a larger batch read at
once from a stream that is in arrival order.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.keys import Keys
from queueing.lanes import LANES
from queueing.message import dumps, loads

SAMPLE_CAP = 32
"""Most batches one heartbeat's entry describes one by one (a uniform sample past it)."""
STREAM_CAP = 2000
"""About the most entries a stage's stats stream keeps."""
WAIT_POINTS = 8
"""Points a batch's queue waits are spread over, for the percentiles."""


@dataclass(slots=True)
class StageRecorder:
    """One stage's batches since the last :meth:`publish`, in one worker."""

    stage: str
    items: int = 0
    batches: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    samples: list[tuple[int, float, float, float]] = field(default_factory=list)
    """(batch size, compute seconds, oldest item's queue wait, newest item's queue wait)."""
    since: float = field(default_factory=time.time)

    def record(self, size: int, compute_s: float, wait_a: float, wait_b: float) -> None:
        """One batch: its size, its handler's run time, and the queue waits of its first and
        last items (in either order)."""
        self.items += size
        self.batches += 1
        self.sizes[size] += 1
        sample = (size, compute_s, max(wait_a, wait_b), min(wait_a, wait_b))
        if len(self.samples) < SAMPLE_CAP:
            self.samples.append(sample)
        else:  # reservoir sampling: every batch is kept with the same chance
            slot = random.randrange(self.batches)
            if slot < SAMPLE_CAP:
                self.samples[slot] = sample

    async def publish(self, client: AsyncRedis, keys: Keys) -> None:
        """Append what was noted since the last call to the stage's stats stream (nothing
        when no batch ran); on a Redis error it is kept for the next call."""
        if not self.batches:
            return
        now = time.time()
        await client.xadd(
            keys.stage_stats(self.stage),
            {
                "from": repr(self.since),
                "to": repr(now),
                "items": self.items,
                "batches": self.batches,
                "sizes": dumps(dict(self.sizes)),
                "samples": dumps(self.samples),
            },
            maxlen=STREAM_CAP,
            approximate=True,
        )
        self.items = self.batches = 0
        self.sizes.clear()
        self.samples.clear()
        self.since = now


@dataclass(frozen=True)
class StageActivity:
    """A stage's activity over a recent window, summed over its workers."""

    items_per_s: list[float]
    """Items per second in each bucket of the window, oldest first."""
    batch_sizes: dict[int, int]
    """Batches run, by size."""
    queue_wait_s: dict[str, float | None]
    """``p50`` and ``p99`` of the items' queue waits (None with no data)."""
    compute_s: dict[str, float | None]
    """``p50`` and ``p99`` of the batches' compute times (None with no data)."""
    items: int
    batches: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "items_per_s": [round(rate, 3) for rate in self.items_per_s],
            "batch_sizes": [[size, n] for size, n in sorted(self.batch_sizes.items())],
            "queue_wait_s": self.queue_wait_s,
            "compute_s": self.compute_s,
            "items": self.items,
            "batches": self.batches,
        }


async def read_recent(
    client: AsyncRedis,
    keys: Keys,
    stages: Sequence[str],
    *,
    window_s: float = 300.0,
    bucket_s: float = 5.0,
    now: float | None = None,
) -> dict[str, StageActivity]:
    """Each stage's activity over the last ``window_s`` seconds, in ``bucket_s`` buckets (one
    round trip for all the stages)."""
    now = time.time() if now is None else now
    start = now - window_s
    pipe = client.pipeline(transaction=False)
    for stage in stages:
        pipe.xrange(keys.stage_stats(stage), min=f"{int(start * 1000)}", count=STREAM_CAP)
    replies = await pipe.execute()
    return {
        stage: _fold([fields for _, fields in entries], start, window_s, bucket_s)
        for stage, entries in zip(stages, replies, strict=True)
    }


def _fold(
    entries: list[dict[bytes, bytes]], start: float, window_s: float, bucket_s: float
) -> StageActivity:
    n_buckets = max(1, math.ceil(window_s / bucket_s))
    counts = [0.0] * n_buckets
    sizes: Counter[int] = Counter()
    waits: list[tuple[float, float]] = []
    computes: list[tuple[float, float]] = []
    items = batches = 0
    for fields in entries:
        begin, end = float(fields[b"from"]), float(fields[b"to"])
        n_items, n_batches = int(fields[b"items"]), int(fields[b"batches"])
        items += n_items
        batches += n_batches
        _spread(counts, n_items, begin, end, start, bucket_s)
        sizes.update({int(size): n for size, n in loads(fields[b"sizes"]).items()})
        samples = loads(fields[b"samples"])
        # Each sample stands for n_batches / len(samples) batches of this entry.
        scale = n_batches / len(samples) if samples else 0.0
        for size, compute_s, oldest, newest in samples:
            computes.append((compute_s, scale))
            points = min(size, WAIT_POINTS)
            for k in range(points):
                at = k / (points - 1) if points > 1 else 0.5
                waits.append((newest + (oldest - newest) * at, scale * size / points))
    return StageActivity(
        items_per_s=[count / bucket_s for count in counts],
        batch_sizes=dict(sizes),
        queue_wait_s=_percentiles(waits),
        compute_s=_percentiles(computes),
        items=items,
        batches=batches,
    )


def _spread(
    counts: list[float], n: int, begin: float, end: float, start: float, bucket_s: float
) -> None:
    """Add ``n`` items, spread evenly over [begin, end], to the buckets from ``start`` on."""
    span = max(end - begin, 1e-6)
    first = max(0, int((begin - start) // bucket_s))
    last = min(len(counts) - 1, int((end - start) // bucket_s))
    for index in range(first, last + 1):
        low = max(begin, start + index * bucket_s)
        high = min(end, start + (index + 1) * bucket_s)
        if high > low:
            counts[index] += n * (high - low) / span
    if end - begin < 1e-6 and 0 <= last < len(counts):
        counts[last] += n


def _percentiles(weighted: list[tuple[float, float]]) -> dict[str, float | None]:
    """p50 and p99 of weighted values."""
    total = sum(weight for _, weight in weighted)
    if total <= 0:
        return {"p50": None, "p99": None}
    ordered = sorted(weighted)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        target, running = q * total, 0.0
        for value, weight in ordered:
            running += weight
            if running >= target:
                out[name] = value
                break
        else:
            out[name] = ordered[-1][0]
    return out


async def in_flight(
    client: AsyncRedis, keys: Keys, stages: Sequence[str], partitions: int
) -> dict[str, int]:
    """Entries each stage's workers have read and not yet finished (pending in its group, over
    every partition), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for stage in stages:
        for p in range(partitions):
            for lane in LANES:
                pipe.xpending(keys.stream(p, stage, lane), Keys.group(stage))
    replies = await pipe.execute(raise_on_error=False)
    counts = [0 if isinstance(r, Exception) else int(r["pending"]) for r in replies]
    per_stage = partitions * len(LANES)
    return {
        stage: sum(counts[i * per_stage : (i + 1) * per_stage]) for i, stage in enumerate(stages)
    }
