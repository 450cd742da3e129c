"""Declaring pipelines: an ordered chain of stages, some of which route.

    echo = Pipeline("echo", handle_batch)                    # one stage
    chain = Pipeline("chain", preprocess, model, postprocess) # each output feeds the next
    composed = Pipeline(                                      # the seed's conditional composition
        "composed",
        stage(model_one, routes=["model_two"]),  # returns Route("model_two", x) or a result
        model_two,
    )

A stage is a batch handler (``@batch`` function), a plain function of a list (batched with
defaults), or a class with one ``@batch`` method (and an optional ``setup(device)``). Each
output of a stage feeds the next stage; the last stage's outputs are the results. A routing
stage's outputs are results too, except a :class:`~workers.stage.Route`, which sends that item
on to the stage it names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queueing.keys import check_name
from queueing.registry import PipelineSpec
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
        self.stages = [s if isinstance(s, StageDef) else stage(s) for s in stages]
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {name}: stage names must be unique, got {names}")
        for s in self.stages:
            for target in s.routes:
                if target not in names:
                    raise ValueError(
                        f"pipeline {name}: stage {s.name} routes to unknown stage {target!r}"
                    )
        self.input_schema = input_schema
        self.example = example
        self.max_backlog = max_backlog
        self.description = description

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={[s.name for s in self.stages]})"

    def full_name(self, short: str) -> str:
        return f"{self.name}.{short}"

    def compile(self) -> Topology:
        """The spec for the registry and the stages for workers."""
        stages: dict[str, Stage] = {}
        for index, s in enumerate(self.stages):
            following = self.stages[index + 1] if index + 1 < len(self.stages) else None
            nxt = (self.full_name(following.name),) if following and not s.routes else ()
            full = self.full_name(s.name)
            stages[full] = Stage(
                name=full,
                target=s.target,
                next=nxt,
                routes=tuple(self.full_name(r) for r in s.routes),
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
