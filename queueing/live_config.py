"""Live batch settings: change a stage's ``max_batch_size``, ``batch_wait_timeout_s``,
``max_latency_ms`` or ``lane_weights`` (its priority lanes' shares of a batch, see
:mod:`queueing.lanes`) without restarting its workers.

A stage's live settings are one JSON document, ``{"values": {...}, "since": unix seconds}``, in
a field of the registry hash (``settings:<pipeline>.<stage>``, see
:meth:`~queueing.keys.Keys.settings_field`): every write is a single-key command, and whoever
reads the registry (gateways, clients, ``GET /v1/pipelines/{name}``) sees the values in force
and since when. Workers read their stages' fields every :data:`POLL_S` (one HMGET, off the
per-item path) and batch with the new values from their next batch on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.errors import DecodeError, UnknownPipeline
from queueing.keys import Keys, check_name
from queueing.lanes import check_weights
from queueing.message import dumps, loads
from queueing.registry import StageSpec, parse_registry
from queueing.scripts import REPLACE, replace_call
from queueing.settings import Settings

POLL_S = 0.5
"""How often a worker reads its stages' live settings (a change applies within this)."""
SETTINGS = ("max_batch_size", "batch_wait_timeout_s", "max_latency_ms", "lane_weights")
"""What can be changed live."""
AUTO = "auto"


class BadSetting(ValueError):
    """A live setting that a stage cannot batch with (the message names it)."""


def check_batch_settings(
    max_batch_size: Any,
    batch_wait_timeout_s: Any,
    max_latency_ms: Any = None,
    max_batch_items: Any = None,
) -> None:
    """ValueError, naming the setting, for a value a stage cannot batch with."""
    if _not_int(max_batch_size) or max_batch_size < 1:
        raise BadSetting(f"max_batch_size must be >= 1 (an integer), got {max_batch_size!r}")
    if batch_wait_timeout_s != AUTO and (
        _not_number(batch_wait_timeout_s) or not batch_wait_timeout_s >= 0
    ):
        raise BadSetting(
            f"batch_wait_timeout_s must be >= 0 (seconds) or 'auto', got {batch_wait_timeout_s!r}"
        )
    if max_latency_ms is not None and (_not_number(max_latency_ms) or not max_latency_ms > 0):
        raise BadSetting(f"max_latency_ms must be a number > 0, got {max_latency_ms!r}")
    if max_batch_items is not None and (_not_int(max_batch_items) or max_batch_items < 1):
        raise BadSetting(f"max_batch_items must be >= 1 (an integer), got {max_batch_items!r}")


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _not_number(value: Any) -> bool:
    """Not a finite number (NaN and infinities are refused: an infinite wait never ends)."""
    return isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to apply, checked: known names only, at least one, each value valid
    (``max_latency_ms`` may be ``None`` to drop the budget)."""
    if not values:
        raise BadSetting(f"no setting given; live settings are {', '.join(SETTINGS)}")
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise BadSetting(f"unknown setting {unknown[0]!r}; live settings are {', '.join(SETTINGS)}")
    checked = dict(values)
    if "lane_weights" in checked:
        try:
            checked["lane_weights"] = list(check_weights(checked["lane_weights"]))
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
    check_batch_settings(
        checked.get("max_batch_size", 1),
        checked.get("batch_wait_timeout_s", 0),
        checked.get("max_latency_ms"),
    )
    return checked


def parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["max_batch_size=64", "batch_wait_timeout_s=auto"]`` as typed, validated values."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise BadSetting(f"expected NAME=VALUE, got {pair!r}")
        values[name.strip()] = _parse_value(name.strip(), raw.strip())
    return validate(values)


def _parse_value(name: str, raw: str) -> Any:
    if name not in SETTINGS:
        raise BadSetting(f"unknown setting {name!r}; live settings are {', '.join(SETTINGS)}")
    if name == "batch_wait_timeout_s" and raw == AUTO:
        return AUTO
    if name == "max_latency_ms" and raw.lower() in ("none", "null", ""):
        return None
    if name == "lane_weights":
        return raw  # (checked, and made a list, by validate)
    try:
        return int(raw) if name == "max_batch_size" else float(raw)
    except ValueError:
        raise BadSetting(f"{name}: {raw!r} is not a number") from None


@dataclasses.dataclass(frozen=True)
class LiveSettings:
    """A stage's live settings: the values set and when they last changed."""

    values: dict[str, Any]
    since: float

    def encode(self) -> bytes:
        return dumps({"values": self.values, "since": self.since})

    @classmethod
    def decode(cls, raw: bytes | str) -> LiveSettings:
        try:
            doc = loads(raw)
            return cls(values=validate(doc["values"]), since=float(doc["since"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"bad live settings: {exc}") from exc


async def stage_spec(client: AsyncRedis, settings: Settings, stage: str) -> StageSpec:
    """The stage as registered, live settings applied (UnknownPipeline if not registered)."""
    check_name(stage)
    return _registered(await client.hgetall(Keys(settings.prefix).registry), stage)


def _registered(raw: Mapping[Any, Any], stage: str) -> StageSpec:
    """The stage in the registry hash's contents ``raw``, live settings applied."""
    pipeline = stage.split(".", 1)[0]
    specs = parse_registry(raw)
    if pipeline not in specs:
        raise UnknownPipeline(pipeline)
    for spec in specs[pipeline].stages:
        if spec.name == stage:
            return spec
    raise UnknownStage(stage)


class UnknownStage(UnknownPipeline):
    """The pipeline is registered, but has no such stage."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage.split(".", 1)[0])
        self.args = (f"unknown stage {stage!r}: its pipeline has no such stage",)


async def set_settings(
    client: AsyncRedis, settings: Settings, stage: str, values: Mapping[str, Any]
) -> StageSpec:
    """Set some of a stage's live settings (merged with those set before); the stage must be
    registered and the result must be a valid stage. Returns the stage as now in force."""
    values = validate(values)
    check_name(stage)
    keys = Keys(settings.prefix)
    field = keys.settings_field(stage)
    replace = client.register_script(REPLACE)
    while True:  # (compare and set: a concurrent writer's update is merged, not lost)
        raw = await client.hgetall(keys.registry)
        current = _registered(raw, stage)
        before = raw.get(field.encode())
        merged: dict[str, Any] = {}
        if before is not None:
            try:
                merged = dict(LiveSettings.decode(before).values)
            except DecodeError:
                merged = {}
        merged.update(values)
        try:
            in_force = dataclasses.replace(current, **merged)
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
        live = LiveSettings(merged, time.time())
        call_keys, args = replace_call(keys.registry, field, before, live.encode())
        if await replace(keys=call_keys, args=args):
            break
    return dataclasses.replace(in_force, settings_since=live.since)


async def reset_settings(client: AsyncRedis, settings: Settings, stage: str) -> bool:
    """Drop a stage's live settings (its declared ones are in force again); False if none."""
    check_name(stage)
    keys = Keys(settings.prefix)
    return bool(await client.hdel(keys.registry, keys.settings_field(stage)))


async def read_live(
    client: AsyncRedis, settings: Settings, stages: Iterable[str]
) -> dict[str, LiveSettings | None]:
    """Each stage's live settings (None: none set, or unreadable). One HMGET of one key."""
    names = list(stages)
    if not names:
        return {}
    keys = Keys(settings.prefix)
    raw = await client.hmget(keys.registry, [keys.settings_field(name) for name in names])
    found: dict[str, LiveSettings | None] = {}
    for name, value in zip(names, raw, strict=True):
        try:
            found[name] = LiveSettings.decode(value) if value is not None else None
        except DecodeError:
            found[name] = None
    return found
