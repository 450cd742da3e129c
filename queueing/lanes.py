"""Priority lanes: ``high``, ``normal`` (the default) and ``low``.

A job is submitted to one lane of its pipeline and stays in it through every stage: each lane
is a stream of its own (``normal`` keeps the stage's one stream key; the others are siblings in
the same partition slot, see :meth:`~queueing.keys.Keys.stream`), read by the stage's one
consumer group. Workers read every lane at once and fill a batch by the *lane weights*
(default ``8, 4, 1``): when several lanes have entries waiting, each of them gets at least its
weighted share of the slots, ``weight / (sum of the weights of the lanes waiting)`` over any
run of batches, and the slots a lane leaves unused go to the others, higher lanes first
(:class:`LaneShares`). So the ``low`` lane keeps at least ``1/13`` of the slots under a flood
of both others (``1/9`` under a ``high`` flood), and a ``high`` job waits for the batch in hand
and its own (see :meth:`workers.forming.BatchFormer.refresh`). Backpressure (``max_backlog``)
is counted per lane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LANES = ("high", "normal", "low")
"""The lanes, highest first."""
DEFAULT_LANE = "normal"
RANK = {lane: rank for rank, lane in enumerate(LANES)}
"""A lane's place in :data:`LANES` (0: the highest)."""
DEFAULT_WEIGHTS = (8, 4, 1)
"""The lane weights of a stage that sets none (high, normal, low)."""
MAX_WEIGHT = 1000


def check_lane(lane: Any) -> str:
    """A lane name, checked (ValueError naming the lanes); None is the default lane."""
    if lane is None:
        return DEFAULT_LANE
    if not isinstance(lane, str) or lane not in RANK:
        raise ValueError(f"unknown priority {lane!r}: use one of {', '.join(map(repr, LANES))}")
    return lane


def check_weights(weights: Any) -> tuple[int, int, int]:
    """Lane weights (high, normal, low), checked: three integers 1..1000 (or ``"8,4,1"``)."""
    raw = weights.split(",") if isinstance(weights, str) else weights
    try:
        values = tuple(_weight(w) for w in raw)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(LANES) or not all(1 <= w <= MAX_WEIGHT for w in values):
        raise ValueError(
            f"lane_weights must be three integers 1..{MAX_WEIGHT} (high, normal, low), "
            f"e.g. 8,4,1; got {weights!r}"
        )
    high, normal, low = values
    return high, normal, low


def _weight(value: Any) -> int:
    if isinstance(value, bool | float):
        raise ValueError(value)
    return int(value.strip() if isinstance(value, str) else value)


class LaneShares:
    """How batches are filled from the lanes: deficit round robin. Each batch, every lane with
    entries waiting earns ``slots x weight / (sum of the weights of such lanes)`` slots of
    credit; it gets the whole slots its credit holds (while it has entries), and the slots
    left go to the lanes, higher first. A lane's credit pays for what it got (never below 0)
    and is dropped while it has nothing waiting. So each waiting lane gets at least its
    weighted share over any run of batches, even with batches of one item, and a lone lane
    gets every slot."""

    def __init__(self) -> None:
        self.credit = dict.fromkeys(LANES, 0.0)

    def plan(
        self, waiting: Mapping[str, int], weights: Sequence[int], slots: int
    ) -> list[tuple[str, int]]:
        """(lane, how many) in the order to take them: the credited shares first (so that a
        cost bound, which cuts a batch short, cuts the extras), then the extras."""
        busy = [lane for lane in LANES if waiting.get(lane, 0) > 0]
        total = sum(weights[RANK[lane]] for lane in busy)
        out: list[tuple[str, int]] = []
        given = dict.fromkeys(LANES, 0)
        left = slots
        for lane in LANES:
            if lane in busy:  # (bounded: a lane cannot bank more than a batch and a slot)
                credit = self.credit[lane] + slots * weights[RANK[lane]] / total
                self.credit[lane] = min(credit, slots + 1.0)
            else:
                self.credit[lane] = 0.0
        # (the most credit first: with fewer slots than lanes, the lane owed most gets one)
        for lane in sorted(busy, key=lambda lane: -self.credit[lane]):
            given[lane] = min(int(self.credit[lane] + 1e-9), waiting[lane], left)
            left -= given[lane]
            if given[lane]:
                out.append((lane, given[lane]))
        for lane in busy:
            extra = min(waiting[lane] - given[lane], left)
            left -= extra
            given[lane] += extra
            if extra:
                out.append((lane, extra))
            self.credit[lane] = max(0.0, self.credit[lane] - given[lane])
        return out
