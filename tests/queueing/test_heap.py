"""settle_heap: once start-up is over, what it built is frozen out of the collector's reach and
the young generation is collected less often; cycles made later are still collected."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROGRAM = """
import gc, weakref
from queueing.heap import YOUNG_THRESHOLD, settle_heap

class Node:
    pass

assert gc.get_freeze_count() == 0
settle_heap()
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen
assert gc.get_threshold()[0] == YOUNG_THRESHOLD
gc.set_threshold(700)
settle_heap()  # once per process: a second call changes nothing
assert gc.get_threshold()[0] == 700 and gc.get_freeze_count() == frozen

a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
assert gone() is None  # a cycle made after start-up is still collected
print("ok")
"""


def test_settle_heap_freezes_start_up_once_and_still_collects_cycles() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
