"""The layers: only ``queueing/`` speaks to Redis. The gateway, the workers, the pipelines and
the CLI go through it, so that what is stored where, and how an outage is told apart from a
bug, is written down once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABOVE_THE_QUEUE = ("api", "workers", "pipelines", "batchline")


def _imports_redis(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "redis" or name.startswith("redis.") for name in names):
            return True
    return False


def test_only_the_queue_layer_imports_redis() -> None:
    importers = {
        path.relative_to(ROOT).as_posix()
        for package in ABOVE_THE_QUEUE
        for path in (ROOT / package).rglob("*.py")
        if _imports_redis(path)
    }
    assert importers == set()
