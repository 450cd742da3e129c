"""Finding pipelines: import the modules a setting names and collect their Pipelines; tell
which of them this install can run (their stages' extras, see :mod:`workers.adapters.extras`)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

from pipelines.dsl import Pipeline
from queueing.errors import ConfigError
from workers.adapters.extras import install_hint, missing_modules, stage_extras


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


def pipeline_extras(pipeline: Pipeline) -> tuple[str, ...]:
    """The extras its stages declare, in order, each once."""
    extras: dict[str, None] = {}
    for definition in pipeline.stage_defs:
        extras.update(dict.fromkeys(stage_extras(definition.target)))
    return tuple(extras)


def unavailable(pipelines: Mapping[str, Pipeline]) -> dict[str, str]:
    """Pipeline name -> why this install cannot run it (an extra is missing), for those that
    cannot run here; nothing is imported to find out."""
    reasons: dict[str, str] = {}
    for name, pipeline in pipelines.items():
        for extra in pipeline_extras(pipeline):
            missing = missing_modules(extra)
            if missing:
                reasons[name] = (
                    f"needs {', '.join(missing)} (the [{extra}] extra): {install_hint(extra)}"
                )
                break
    return reasons
