"""Stages as workers run them: a batch handler, its setup, and where its outputs go."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from queueing.registry import PipelineSpec, StageSpec
from workers.batching import BatchConfig, BatchedHandler, batch


@dataclass(frozen=True)
class Route:
    """Returned by a routing stage for one item: send ``value`` on to stage ``to``.

    Any other output of a routing stage is the job's final result."""

    to: str
    value: Any


@dataclass(frozen=True)
class Stage:
    """One stage: ``target`` is a batch handler (a function, ``@batch``-decorated or not), or a
    class with exactly one ``@batch`` method, instantiated once per worker process; if it has a
    ``setup(device)`` method, that runs first (load the model there, on its device)."""

    name: str
    """Full name, ``<pipeline>.<stage>``."""
    target: Any
    next: tuple[str, ...] = ()
    """Where each output goes: one stage (a chain), several (a fan-out), none (the end)."""
    routes: tuple[str, ...] = ()
    """For a routing stage: the stages a :class:`Route` may name."""
    join: str | None = None
    """For a fan-out branch: the stage that gets ``{branch: output, ...}`` once all are in."""
    fan_in: int = 0
    """For a fan-out branch: how many branches its join waits for."""

    @property
    def needs_device(self) -> bool:
        """Whether loading this stage involves a device (a class with ``setup(device)``)."""
        return inspect.isclass(self.target) and callable(getattr(self.target, "setup", None))

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def config(self) -> BatchConfig:
        handler = self.target
        if inspect.isclass(self.target):
            handler = _batched_method(self.target)[1]
        if isinstance(handler, BatchedHandler):
            return handler.config
        return BatchConfig()

    @property
    def streaming(self) -> bool:
        """Whether its handler streams (a generator, or a ``continuous=True`` step handler)."""
        handler = self.target
        if inspect.isclass(self.target):
            handler = _batched_method(self.target)[1]
        if isinstance(handler, BatchedHandler):
            return handler.streaming is not None
        return inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler)

    def spec(self) -> StageSpec:
        config = self.config
        return StageSpec(
            name=self.name,
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=config.batch_wait_timeout_s,
            next=self.next,
            routes=self.routes,
            join=self.join,
            batch_size_fn=config.cost_name,
            max_latency_ms=config.max_latency_ms,
            max_batch_items=config.max_batch_items if config.batch_size_fn else None,
            lane_weights=config.lane_weights,
        )

    def load(self, device: str) -> BatchedHandler[Any]:
        """The handler, ready to run: the class instantiated and set up on ``device``."""
        if inspect.isclass(self.target):
            instance = self.target()
            setup = getattr(instance, "setup", None)
            if callable(setup):
                setup(device)
            name, _ = _batched_method(self.target)
            bound: BatchedHandler[Any] = getattr(instance, name)
            return bound
        if isinstance(self.target, BatchedHandler):
            return self.target
        if callable(self.target):
            return batch(self.target)
        raise TypeError(f"stage {self.name}: {self.target!r} is neither a function nor a class")


def _batched_method(cls: type) -> tuple[str, BatchedHandler[Any]]:
    found = [
        (name, value) for name, value in vars(cls).items() if isinstance(value, BatchedHandler)
    ]
    for base in cls.__mro__[1:]:
        found += [
            (name, value)
            for name, value in vars(base).items()
            if isinstance(value, BatchedHandler) and name not in {n for n, _ in found}
        ]
    if len(found) != 1:
        names = ", ".join(name for name, _ in found) or "none"
        raise TypeError(
            f"class {cls.__name__} must have exactly one @batch method to serve (found: {names})"
        )
    return found[0]


@dataclass(frozen=True)
class Topology:
    """A compiled pipeline: the spec the registry stores and the stages workers run."""

    spec: PipelineSpec
    stages: dict[str, Stage] = field(default_factory=dict)
