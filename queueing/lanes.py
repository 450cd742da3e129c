"""Priority lanes: ``high``, ``normal`` (the default) and ``low``.

A job is submitted to one lane of its pipeline and stays in it through every stage: each lane
is a stream of its own (``normal`` keeps the stage's one stream key; the others are siblings in
the same partition slot, see :meth:`~queueing.keys.Keys.stream`), read by the stage's one
consumer group. Workers read every lane at once and fill a batch by the *lane weights*
(default ``8, 4, 1``), slot by slot (:class:`LaneShares`): while several lanes have entries in
a worker's hand, each gets ``weight / (sum of the weights of those lanes)`` of the slots, to
within about one slot over any run of batches (each batch charged once, for the slots it
took: so also with batches of one item, and with a cost bound that cuts a batch short), and
the slots a lane cannot fill go to the others. So under a flood of ``high`` jobs the ``low``
lane gets ``1/9`` of the slots, ``1/13`` under a flood of both others; and a ``high`` job
waits for the batch in hand and its own (see :meth:`workers.forming.BatchFormer.refresh`).
Backpressure (``max_backlog``)
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
    """How batches are filled from the lanes: deficit round robin, slot by slot. Before each
    slot, every lane with entries left in hand earns ``weight / (sum of the weights of such
    lanes)`` of a slot of credit, and the slot goes to the one with the most credit (the higher
    on a tie), which pays a whole slot for it. So the slots of a batch interleave by weight
    (``h h h h l h h h h ...`` for 8 and 1), any first part of a batch (what a cost bound keeps)
    is shared by weight too, credit earned equals credit paid, and a lane's credit stays within
    about a slot of 0: each lane with entries in hand gets its weighted share of the slots
    over any run of batches to within a slot or so, even with batches of one item, and a lane
    with fewer entries than its share leaves its slots to the others.

    Credit is charged only by :meth:`charge`, for the slots a batch actually took; what
    :meth:`charge` applied can be taken back with :meth:`refund` (a batch formed again before
    it runs is charged once)."""

    def __init__(self) -> None:
        self.credit = dict.fromkeys(LANES, 0.0)

    def order(self, waiting: Mapping[str, int], weights: Sequence[int], slots: int) -> list[str]:
        """The lane of each of the first ``slots`` slots (fewer if fewer entries wait), in the
        order to take them; charges nothing."""
        return _deal(waiting, weights, slots, dict(self.credit))

    def charge(
        self, waiting: Mapping[str, int], weights: Sequence[int], taken: int
    ) -> dict[str, float]:
        """Charge the first ``taken`` slots of :meth:`order` (same ``waiting`` and weights):
        the change made to each lane's credit (for :meth:`refund`)."""
        credit = dict(self.credit)
        _deal(waiting, weights, taken, credit)
        change = {lane: credit[lane] - self.credit[lane] for lane in LANES}
        self.credit = credit
        return change

    def refund(self, change: Mapping[str, float]) -> None:
        """Undo a :meth:`charge` (its batch was formed again)."""
        for lane, amount in change.items():
            self.credit[lane] -= amount


def _deal(
    waiting: Mapping[str, int], weights: Sequence[int], slots: int, credit: dict[str, float]
) -> list[str]:
    """Deal ``slots`` slots among the lanes waiting by ``credit`` (updated in place)."""
    left = {lane: waiting.get(lane, 0) for lane in LANES}
    dealt: list[str] = []
    for _ in range(slots):
        busy = [lane for lane in LANES if left[lane] > 0]
        if not busy:
            break
        total = sum(weights[RANK[lane]] for lane in busy)
        for lane in busy:
            credit[lane] += weights[RANK[lane]] / total
        # (max keeps the first of equals: the higher lane; 1e-9 absorbs float drift)
        best = max(credit[lane] for lane in busy)
        lane = next(lane for lane in busy if credit[lane] >= best - 1e-9)
        credit[lane] -= 1.0
        left[lane] -= 1
        dealt.append(lane)
    return dealt
