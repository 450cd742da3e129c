"""The garbage collector in a long-running server process (the gateway, a worker).

Python's cyclic collector runs each time enough container objects were allocated, and every
so often it walks the whole heap. In a server, nearly all of that heap is what start-up built
and never frees (modules, the FastAPI app, a model), and under load each request allocates
enough to set the collector off every few requests: the gateway spent about 5% of its CPU in
it, and a full pass over its ~85,000 start-up objects held every request in the process for
about 45 ms. :func:`settle_heap`, called once start-up is over, moves what start-up left out
of the collector's reach (``gc.freeze()``: never scanned, never freed) and lets the young
generation grow larger before it is collected (:data:`YOUNG_THRESHOLD`), so that most
short-lived objects are freed by their reference counts before a collection sees them.
Cycles are still collected, only later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations of container objects (less deallocations) that set off a collection of the
youngest generation (Python's default is 700)."""

_settled = False


def settle_heap() -> None:
    """Collect once, freeze what survives, raise the young generation's threshold. Once per
    process: a later call (a test process starting many apps) changes nothing."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
