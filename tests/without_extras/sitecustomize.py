"""Put on PYTHONPATH by tests/test_extras.py: makes the modules named in
BATCHLINE_TEST_WITHOUT (comma-separated) unimportable in that process, as on an install
without their extras (the import system itself refuses them; nothing of batchline's is
replaced)."""

from __future__ import annotations

import os
import sys
from typing import Any


class _Without:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


_names = {n for n in os.environ.get("BATCHLINE_TEST_WITHOUT", "").split(",") if n}
if _names:
    sys.meta_path.insert(0, _Without(_names))
