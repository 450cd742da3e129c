"""Declaring pipelines: an ordered chain of stages, some of which route.

    echo = Pipeline("echo", handle_batch)                    # one stage
    chain = Pipeline("chain", preprocess, model, postprocess) # each output feeds the next
    composed = Pipeline(                                      # the seed's conditional composition
        "composed",
        stage(model_one, routes=["model_two"]),  # returns Route("model_two", x) or a result
        model_two,
    )
    ensemble = Pipeline("ensemble", fan_out(model_a, model_b), average)  # average gets
                                                  # {"model_a": out_a, "model_b": out_b}

A stage is a batch handler (``@batch`` function), a plain function of a list (batched with
defaults), or a class with one ``@batch`` method (and an optional ``setup(device)``). Each
output of a stage feeds the next stage; the last stage's outputs are the results. A routing
stage's outputs are results too, except a :class:`~workers.stage.Route`, which sends that item
on to the stage it names. A :func:`fan_out` sends each item to all its branches at once; the
stage after it (the join) gets one ``{branch name: output}`` per item once every branch is in.
A pipeline that starts with a fan-out gets a first stage, ``split``, that passes items on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queueing.keys import check_name
from queueing.registry import PipelineSpec
from workers.batching import batch
from workers.stage import Stage, Topology


@dataclass(frozen=True)
class StageDef:
    """A stage as declared: what runs, its short name, and (for a router) where it may send."""

    target: Any
    name: str
    routes: tuple[str, ...] = ()


def stage(target: Any, *, name: str | None = None, routes: Sequence[str] = ()) -> StageDef:
    """Declare a stage explicitly (to name it, or to let it route to other stages)."""
    short = name or getattr(target, "__name__", None)
    if not short:
        raise TypeError(f"stage {target!r} needs a name=")
    return StageDef(target, check_name(short.strip("_") or "stage"), tuple(routes))


@dataclass(frozen=True)
class FanOut:
    """Branches that each get every item; the next stage of the pipeline joins them."""

    branches: tuple[StageDef, ...]


def fan_out(*branches: Any) -> FanOut:
    """Send each item to every branch at once (an ensemble); the following stage joins them."""
    if len(branches) < 2:
        raise ValueError("fan_out needs at least two branches")
    return FanOut(tuple(b if isinstance(b, StageDef) else stage(b) for b in branches))


async def _split(items: list[Any]) -> list[Any]:
    return items


class Pipeline:
    """A named pipeline of stages; workers run it, the registry publishes its spec."""

    def __init__(
        self,
        name: str,
        *stages: Any,
        input_schema: Mapping[str, Any] | None = None,
        example: Any = None,
        max_backlog: int | None = None,
        description: str = "",
    ) -> None:
        self.name = check_name(name)
        if "." in name:
            raise ValueError(f"pipeline name {name!r} must not contain '.'")
        if not stages:
            raise ValueError(f"pipeline {name} needs at least one stage")
        elements: list[StageDef | FanOut] = [
            s if isinstance(s, StageDef | FanOut) else stage(s) for s in stages
        ]
        if isinstance(elements[0], FanOut):
            elements.insert(
                0, stage(batch(max_batch_size=256, batch_wait_timeout_s=0)(_split), name="split")
            )
        self.elements = elements
        names = [d.name for d in self.stage_defs]
        branch_names = {b.name for e in elements if isinstance(e, FanOut) for b in e.branches}
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {name}: stage names must be unique, got {names}")
        for index, element in enumerate(elements):
            if isinstance(element, FanOut):
                after = elements[index + 1] if index + 1 < len(elements) else None
                if not isinstance(after, StageDef):
                    raise ValueError(
                        f"pipeline {name}: a fan_out must be followed by its join stage"
                    )
                if any(b.routes for b in element.branches):
                    raise ValueError(f"pipeline {name}: fan-out branches cannot route")
            elif element.routes:
                for target in element.routes:
                    if target not in names:
                        raise ValueError(
                            f"pipeline {name}: stage {element.name} routes to unknown stage {target!r}"
                        )
                    if target in branch_names:
                        raise ValueError(
                            f"pipeline {name}: stage {element.name} routes to {target!r}, a "
                            f"fan_out branch; a route may only name a stage outside a fan_out"
                        )
        self.input_schema = input_schema
        self.example = example
        self.max_backlog = max_backlog
        self.description = description

    @property
    def stage_defs(self) -> list[StageDef]:
        """Every stage, fan-out branches included, in order."""
        out: list[StageDef] = []
        for element in self.elements:
            out += element.branches if isinstance(element, FanOut) else [element]
        return out

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={[s.name for s in self.stage_defs]})"

    def full_name(self, short: str) -> str:
        return f"{self.name}.{short}"

    def compile(self) -> Topology:
        """The spec for the registry and the stages for workers."""
        stages: dict[str, Stage] = {}
        for index, element in enumerate(self.elements):
            following = self.elements[index + 1] if index + 1 < len(self.elements) else None
            if isinstance(element, FanOut):
                assert isinstance(following, StageDef)
                for branch in element.branches:
                    full = self.full_name(branch.name)
                    stages[full] = Stage(
                        name=full,
                        target=branch.target,
                        join=self.full_name(following.name),
                        fan_in=len(element.branches),
                    )
                continue
            if element.routes:
                nxt: tuple[
                    str, ...
                ] = ()  # a router's outputs are results unless a Route names a stage
            elif isinstance(following, FanOut):
                nxt = tuple(self.full_name(b.name) for b in following.branches)
            elif following is not None:
                nxt = (self.full_name(following.name),)
            else:
                nxt = ()
            full = self.full_name(element.name)
            stages[full] = Stage(
                name=full,
                target=element.target,
                next=nxt,
                routes=tuple(self.full_name(r) for r in element.routes),
            )
        for st in stages.values():
            if st.streaming and (st.next or st.routes or st.join):
                raise ValueError(
                    f"pipeline {self.name}: stage {st.short_name} streams its outputs, so it "
                    "must be the pipeline's last stage (nothing can be handed on from it)"
                )
        spec = PipelineSpec(
            name=self.name,
            stages=tuple(st.spec() for st in stages.values()),
            input_schema=self.input_schema,
            example=self.example,
            max_backlog=self.max_backlog,
            description=self.description,
        )
        return Topology(spec, stages)
