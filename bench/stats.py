"""Numbers: percentiles, latency summaries, and the result every scenario returns."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated
    between the closest ranks (numpy's default ``linear`` method). NaN when empty."""
    if not sorted_values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


def weighted_percentile(sorted_pairs: Sequence[tuple[float, int]], q: float) -> float:
    """:func:`percentile` of the values each repeated ``weight`` times, without expanding
    them. ``sorted_pairs``: (value, weight >= 1), sorted by value."""
    total = sum(weight for _, weight in sorted_pairs)
    if total == 0:
        return math.nan
    position = (total - 1) * q / 100
    low_rank, weight_high = math.floor(position), position - math.floor(position)

    def at(rank: int) -> float:
        seen = 0
        for value, weight in sorted_pairs:
            seen += weight
            if rank < seen:
                return value
        return sorted_pairs[-1][0]

    return at(low_rank) * (1 - weight_high) + at(min(low_rank + 1, total - 1)) * weight_high


@dataclass(frozen=True)
class Latency:
    """A latency distribution, in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    method: str = ""
    """How the samples were taken (one line, for the JSON)."""

    @classmethod
    def of_seconds(cls, samples: Iterable[float], method: str = "") -> Latency | None:
        """Summarise samples given in seconds; None when there are none."""
        values = sorted(s * 1000.0 for s in samples)
        if not values:
            return None
        return cls(
            count=len(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=values[-1],
            method=method,
        )

    @classmethod
    def of_weighted_seconds(
        cls, samples: Iterable[tuple[float, int]], method: str = ""
    ) -> Latency | None:
        """Summarise (seconds, count) pairs: ``count`` items that each took ``seconds`` (the
        items of one batch); None when there are none."""
        pairs = sorted((s * 1000.0, n) for s, n in samples if n > 0)
        total = sum(n for _, n in pairs)
        if not total:
            return None
        return cls(
            count=total,
            mean=sum(v * n for v, n in pairs) / total,
            p50=weighted_percentile(pairs, 50),
            p90=weighted_percentile(pairs, 90),
            p99=weighted_percentile(pairs, 99),
            max=pairs[-1][0],
            method=method,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean,
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "max_ms": self.max,
            "method": self.method,
        }


@dataclass
class Result:
    """What one scenario measured.

    ``latency`` is per item under the throughput run's load; ``idle_latency`` is per item in
    a closed loop at concurrency 1 (one request at a time, nothing else queued)."""

    name: str
    items: int
    seconds: float
    latency: Latency | None = None
    idle_latency: Latency | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (settings used, batch sizes seen, server-side latency)."""

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "items": self.items,
            "seconds": self.seconds,
            "items_per_s": self.items_per_s,
            "latency": self.latency.to_dict() if self.latency else None,
            "idle_latency": self.idle_latency.to_dict() if self.idle_latency else None,
            "extra": self.extra,
        }


def histogram(values: Iterable[int]) -> dict[int, int]:
    """Value -> how often it occurs, ordered by value."""
    counts: dict[int, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))
