"""The one table of scenarios. A scenario is a function of the run's :class:`Context` that
returns a :class:`~bench.stats.Result`; register it with :func:`scenario`:

    @scenario("echo-http", "echo through the gateway, 64 concurrent clients",
              goals=[Goal("echo-client", 0.5)])
    def echo_http(ctx: Context) -> Result:
        ...

Scenarios run in the order they were registered (modules listed in ``bench.__main__``), so
one may read what an earlier one left in ``ctx.shared`` (``mlp-inprocess`` replays the batch
sizes that ``mlp-client`` saw). A goal compares this scenario's items/s with another's:
``ratio = this / reference``, met when ``ratio >= at_least``. A :class:`Derived` figure is any
other number computed from finished results once the run is over (the latency each added
stage costs, say), with an optional bound:

    @scenario("echo-chain3", "...", derived=[
        Derived("c1 p50 ms per added stage", ("echo-chain3", "echo-client"),
                lambda r: (r["echo-chain3"].idle_latency.p50
                           - r["echo-client"].idle_latency.p50) / 2,
                unit="ms", at_most=1.0),
    ])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import Context
    from bench.stats import Result

RunFn = Callable[["Context"], "Result"]


@dataclass(frozen=True)
class Goal:
    """``this items/s >= at_least * reference items/s`` (no target: just report the ratio)."""

    reference: str
    at_least: float | None = None
    label: str = ""
    """Shown beside the goal (``long-run``: a second, later target on the same ratio)."""


@dataclass(frozen=True)
class Derived:
    """A figure computed from the run's results (this scenario's and others') after the run:
    ``compute(results by name)``, evaluated only when every scenario in ``needs`` ran; it may
    return None when an input is missing (a scenario without an idle latency, say). Met when
    within ``at_most`` / ``at_least`` (no bound: just reported)."""

    label: str
    needs: tuple[str, ...]
    compute: Callable[[Mapping[str, Result]], float | None]
    unit: str = ""
    at_most: float | None = None
    at_least: float | None = None
    formula: str = ""
    """How it is computed, in words (for the JSON)."""

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` is within the bounds; None without bounds or without a value."""
        if value is None or (self.at_most is None and self.at_least is None):
            return None
        if math.isnan(value):
            return False
        return (self.at_most is None or value <= self.at_most) and (
            self.at_least is None or value >= self.at_least
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: RunFn
    goals: tuple[Goal, ...] = ()
    derived: tuple[Derived, ...] = ()

    @property
    def reference(self) -> str | None:
        """The scenario the table's ratio column compares with (the first goal's)."""
        return self.goals[0].reference if self.goals else None


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, description: str, *, goals: Iterable[Goal] = (), derived: Iterable[Derived] = ()
) -> Callable[[RunFn], RunFn]:
    """Register ``fn`` as scenario ``name``."""

    def register(fn: RunFn) -> RunFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, description, fn, tuple(goals), tuple(derived))
        return fn

    return register


def select(patterns: Sequence[str]) -> list[Scenario]:
    """The scenarios matching any of ``patterns`` (names or globs such as ``mlp-*``), in
    registration order; all of them when ``patterns`` is empty. ValueError names a pattern
    that matches nothing."""
    if not patterns:
        return list(SCENARIOS.values())
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [name for name in SCENARIOS if fnmatchcase(name, pattern)]
        if not matched:
            known = ", ".join(SCENARIOS)
            raise ValueError(f"no scenario matches {pattern!r}; known: {known}")
        chosen.update(matched)
    return [s for name, s in SCENARIOS.items() if name in chosen]
