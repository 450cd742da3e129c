"""Finding pipelines: import the modules a setting names and collect their Pipelines."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from pipelines.dsl import Pipeline
from queueing.errors import ConfigError


def load_pipelines(modules: Iterable[str]) -> dict[str, Pipeline]:
    """Every :class:`Pipeline` defined at the top level of ``modules`` (or listed in their
    ``PIPELINES``), by name. A module that cannot be imported raises ConfigError."""
    found: dict[str, Pipeline] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"BATCHLINE_PIPELINES names {module_name!r}, which cannot be imported: {exc}"
            ) from exc
        candidates = list(getattr(module, "PIPELINES", [])) or [
            value for value in vars(module).values() if isinstance(value, Pipeline)
        ]
        for pipeline in candidates:
            other = found.get(pipeline.name)
            if other is not None and other is not pipeline:
                raise ConfigError(f"two pipelines are named {pipeline.name!r} (in {module_name})")
            found[pipeline.name] = pipeline
    return found
