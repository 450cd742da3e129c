"""Which optional extra of the ``batchline`` package brings which framework, and the error
that names it when one is missing.

The core install (queue, gateway, client, CLI) has no framework in it; each adapter needs
one extra (``pip install 'batchline[torch]'``, ``[sklearn]``, ``[keras]``, ``[rl]``,
``[rllib]``; ``[all]`` is every one but ``rllib``). A stage class says which extras it needs
in ``extras``; the adapters set it, and so does a hand-written stage that imports a framework::

    class Embedder:
        extras = ("torch",)
        def setup(self, device): ...

:func:`missing_modules` tells, without importing anything heavy, whether an extra is
installed, so that ``batchline up`` and ``batchline worker`` skip the pipelines they cannot
run (saying which and why) instead of crashing; :func:`require` imports a framework module
or raises :class:`MissingExtra` with the ``pip install`` line that brings it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from queueing.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "sklearn": ("sklearn", "joblib"),
    "keras": ("keras", "torch"),  # Keras 3 on its torch backend (no TensorFlow)
    "rl": ("gymnasium", "torch"),
    "rllib": ("ray", "gymnasium", "torch"),
}
"""Extra name -> the top-level modules it installs (and that its adapter imports)."""


class MissingExtra(ConfigError):
    """A framework that an adapter or a stage needs is not installed."""

    def __init__(self, extra: str, modules: Iterable[str], what: str = "") -> None:
        self.extra = extra
        self.modules = tuple(modules)
        who = f"{what} needs" if what else "this needs"
        super().__init__(
            f"{who} {', '.join(self.modules)}, which is not installed: "
            f"pip install 'batchline[{extra}]'"
        )


def install_hint(extra: str) -> str:
    return f"pip install 'batchline[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found by their import spec,
    without importing them). KeyError for an extra that does not exist."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def stage_extras(target: Any) -> tuple[str, ...]:
    """The extras a stage target declares (its ``extras`` attribute; none by default)."""
    extras = getattr(target, "extras", ())
    if isinstance(extras, str):
        extras = (extras,)
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ConfigError(
            f"{target!r} declares unknown extras {unknown}; known: {', '.join(sorted(EXTRAS))}"
        )
    return tuple(extras)


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module`` (a framework of ``extra``), or raise :class:`MissingExtra`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise  # a module inside the framework is missing: a broken install, not ours to name
        raise MissingExtra(extra, [module], what) from exc
