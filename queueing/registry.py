"""Pipeline specs: what workers publish and gateways and clients read from ``bl:registry``.

A spec is pure data (stage names, batch settings, routes, the input schema), so that a
gateway learns pipelines without importing any model code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.errors import DecodeError, UnknownPipeline
from queueing.keys import Keys, check_name
from queueing.message import dumps, loads
from queueing.settings import Settings


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, as the registry stores it."""

    name: str
    """Full stage name, ``<pipeline>.<stage>``: its stream and consumer group."""
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0
    next: tuple[str, ...] = ()
    """Stages this one hands off to: one for a chain, several for a fan-out; empty at the end."""
    routes: tuple[str, ...] = ()
    """Stages a routing stage may pick per item."""
    join: str | None = None
    """For a fan-out branch: the join stage its output feeds."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.max_batch_size < 1:
            raise ValueError(f"stage {self.name}: max_batch_size must be >= 1")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"stage {self.name}: batch_wait_timeout_s must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "next": list(self.next),
            "routes": list(self.routes),
            "join": self.join,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StageSpec:
        return cls(
            name=doc["name"],
            max_batch_size=int(doc["max_batch_size"]),
            batch_wait_timeout_s=float(doc["batch_wait_timeout_s"]),
            next=tuple(doc.get("next", ())),
            routes=tuple(doc.get("routes", ())),
            join=doc.get("join"),
        )


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline as the registry stores it: its stages, the first one taking submissions."""

    name: str
    stages: tuple[StageSpec, ...]
    input_schema: Mapping[str, Any] | None = None
    """JSON Schema the gateway checks each input against before anything is queued."""
    example: Any = None
    """An example input, shown by the gateway."""
    max_backlog: int | None = None
    """Limit of the first stage's backlog (None: the deployment's default)."""
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.stages:
            raise ValueError(f"pipeline {self.name} has no stages")

    @property
    def entry(self) -> StageSpec:
        return self.stages[0]

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"pipeline {self.name} has no stage {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "stages": [s.to_dict() for s in self.stages],
            "input_schema": self.input_schema,
            "example": self.example,
            "max_backlog": self.max_backlog,
            "extra": dict(self.extra),
        }

    def encode(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes | str) -> PipelineSpec:
        try:
            doc = loads(raw)
            return cls(
                name=doc["name"],
                description=doc.get("description", ""),
                stages=tuple(StageSpec.from_dict(s) for s in doc["stages"]),
                input_schema=doc.get("input_schema"),
                example=doc.get("example"),
                max_backlog=doc.get("max_backlog"),
                extra=doc.get("extra") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"bad pipeline spec in the registry: {exc}") from exc


async def publish(client: AsyncRedis, settings: Settings, specs: Sequence[PipelineSpec]) -> None:
    """Write the specs to the registry and create their stages' consumer groups (on every
    partition), so that clients and gateways can submit before any worker has started
    reading. Safe to repeat: a spec is overwritten, an existing group is kept."""
    # Imported here so that the stream protocol may use the specs without an import cycle.
    from queueing.streams import StageQueue

    if not specs:
        return
    keys = Keys(settings.prefix)
    await client.hset(keys.registry, mapping={spec.name: spec.encode() for spec in specs})
    for spec in specs:
        for stage in spec.stages:
            await StageQueue(client, settings, stage.name, "publisher").ensure_groups()


def parse_registry(raw: Mapping[Any, Any]) -> dict[str, PipelineSpec]:
    """The registry hash's contents as specs by name."""
    return {name.decode(): PipelineSpec.decode(value) for name, value in raw.items()}


def lookup(specs: Mapping[str, PipelineSpec], name: str) -> PipelineSpec:
    try:
        return specs[name]
    except KeyError:
        raise UnknownPipeline(name) from None
