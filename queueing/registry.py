"""Pipeline specs: what workers publish and gateways and clients read from ``bl:registry``.

A spec is pure data (stage names, batch settings, routes, the input schema), so that a
gateway learns pipelines without importing any model code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.errors import DecodeError, UnknownPipeline
from queueing.keys import SETTINGS_FIELD_PREFIX, Keys, check_name
from queueing.lanes import DEFAULT_WEIGHTS, check_weights
from queueing.message import dumps, loads
from queueing.settings import Settings


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, as the registry stores it."""

    name: str
    """Full stage name, ``<pipeline>.<stage>``: its stream and consumer group."""
    max_batch_size: int = 32
    """The most items per batch, or the most cost when ``batch_size_fn`` is set."""
    batch_wait_timeout_s: float | str = 0.0
    """Seconds a partial batch waits for more, or ``"auto"`` (adaptive)."""
    next: tuple[str, ...] = ()
    """Stages this one hands off to: one for a chain, several for a fan-out; empty at the end."""
    routes: tuple[str, ...] = ()
    """Stages a routing stage may pick per item."""
    join: str | None = None
    """For a fan-out branch: the join stage its output feeds."""
    batch_size_fn: str | None = None
    """The name of the function that prices a batch (None: ``max_batch_size`` counts items)."""
    max_latency_ms: float | None = None
    """The adaptive wait's latency budget."""
    max_batch_items: int | None = None
    """With ``batch_size_fn``: the most items per batch."""
    lane_weights: tuple[int, int, int] = DEFAULT_WEIGHTS
    """The priority lanes' weights (high, normal, low; see :mod:`queueing.lanes`)."""
    settings_since: float | None = None
    """When live settings (``batchline config set``) last changed this stage's batching (unix
    seconds); None: the values declared in code are in force."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.max_batch_size < 1:
            raise ValueError(f"stage {self.name}: max_batch_size must be >= 1")
        wait = self.batch_wait_timeout_s
        if wait != "auto" and (isinstance(wait, str) or wait < 0):
            raise ValueError(f"stage {self.name}: batch_wait_timeout_s must be >= 0 or 'auto'")
        object.__setattr__(self, "lane_weights", check_weights(self.lane_weights))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "next": list(self.next),
            "routes": list(self.routes),
            "join": self.join,
            "batch_size_fn": self.batch_size_fn,
            "max_latency_ms": self.max_latency_ms,
            "max_batch_items": self.max_batch_items,
            "lane_weights": list(self.lane_weights),
            "settings_since": self.settings_since,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StageSpec:
        return cls(
            name=doc["name"],
            max_batch_size=int(doc["max_batch_size"]),
            batch_wait_timeout_s=_wait(doc["batch_wait_timeout_s"]),
            next=tuple(doc.get("next", ())),
            routes=tuple(doc.get("routes", ())),
            join=doc.get("join"),
            batch_size_fn=doc.get("batch_size_fn"),
            max_latency_ms=doc.get("max_latency_ms"),
            max_batch_items=doc.get("max_batch_items"),
            lane_weights=tuple(doc.get("lane_weights", DEFAULT_WEIGHTS)),
            settings_since=doc.get("settings_since"),
        )


def _wait(value: Any) -> float | str:
    return "auto" if value == "auto" else float(value)


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
    """The registry hash's contents as specs by name, with the live settings in force
    (``batchline config set``) applied to their stages."""
    specs: dict[str, PipelineSpec] = {}
    live: dict[str, Any] = {}
    for name, value in raw.items():
        field_name = name.decode()
        if field_name.startswith(SETTINGS_FIELD_PREFIX):
            live[field_name[len(SETTINGS_FIELD_PREFIX) :]] = value
        else:
            specs[field_name] = PipelineSpec.decode(value)
    if live:
        specs = {name: with_live_settings(spec, live) for name, spec in specs.items()}
    return specs


def with_live_settings(spec: PipelineSpec, live: Mapping[str, Any]) -> PipelineSpec:
    """``spec`` with each stage's live settings (raw JSON by stage name) applied; a value that
    does not decode is ignored (the stage keeps its declared settings)."""
    stages = []
    changed = False
    for stage in spec.stages:
        raw = live.get(stage.name)
        doc = _live_doc(raw) if raw is not None else None
        if doc is None:
            stages.append(stage)
            continue
        try:
            stages.append(
                dataclasses.replace(stage, **doc["values"], settings_since=float(doc["since"]))
            )
            changed = True
        except (TypeError, ValueError, KeyError):
            stages.append(stage)
    return dataclasses.replace(spec, stages=tuple(stages)) if changed else spec


def _live_doc(raw: bytes | str) -> dict[str, Any] | None:
    try:
        doc = loads(raw)
    except DecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        return None
    return doc


def lookup(specs: Mapping[str, PipelineSpec], name: str) -> PipelineSpec:
    try:
        return specs[name]
    except KeyError:
        raise UnknownPipeline(name) from None
