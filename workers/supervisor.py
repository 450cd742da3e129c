"""A pre-forking supervisor: ``batchline worker --processes N``.

The supervisor imports the pipelines once, then forks N worker processes from itself. A child
that dies of a crash (an input that kills the process, the OOM killer, a segfault in native
code) is replaced at once by a new fork, under the same consumer name, so that:

- the restart costs a fork, not a fresh interpreter importing torch and the user's code
  (about 0.5 s of CPU per restart for the smallest pipeline on a 2-core machine; poison that
  crashes the process 3 times per input made restarts the whole cost);
- the new process re-reads the entries its predecessor held at once (a consumer's own pending
  entries, read at start-up) instead of a live worker claiming them after the visibility
  timeout.

A child that exits 0 (SIGTERM, or burst mode done) is not replaced. SIGTERM / SIGINT to the
supervisor go to every child, which finish their batches; the supervisor exits once they are
all gone (0 if each exited 0). A child that dies before it was ready (its models failed to
load) is restarted after a pause that doubles each time, up to :data:`MAX_PAUSE_S`, so a
broken deployment does not fork in a loop.

Fork safety: the supervisor itself opens no connection, starts no thread and runs no event
loop; every child builds its own (CUDA, too, is initialised in the child only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.worker import Worker

log = logging.getLogger(__name__)

WAKE_S = 0.5
"""The supervisor looks at its children at least this often."""
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 30.0
"""Longest pause before restarting a child that keeps dying before it is ready."""

Serve = Callable[[str, Callable[[], None]], int]
"""Runs one worker under a consumer name until it stops; calls its second argument once the
worker is ready (serving); returns the exit status."""


@dataclass
class _Slot:
    name: str
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    pause_s: float = 0.0


def supervise(serve: Serve, processes: int, base_name: str) -> int:
    """Run ``processes`` children (consumer names ``<base_name>-<i>``), replacing crashed ones,
    until SIGTERM / SIGINT or until every child has exited 0."""
    if processes < 1:
        raise ValueError(f"--processes must be at least 1, got {processes}")
    slots = [_Slot(f"{base_name}-{i}") for i in range(processes)]
    signalled: set[int] = set()
    """SIGTERM / SIGINT received: stopping."""

    def on_signal(signum: int, _: object) -> None:
        signalled.add(signum)
        for slot in slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for slot in slots:
            _fork(slot, serve, previous)
        while any(slot.pid for slot in slots):
            _collect_ready(slots)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                _wait_for_news(slots)
                continue
            dead = next((s for s in slots if s.pid == pid), None)
            if dead is None:
                continue
            slot = dead
            code = os.waitstatus_to_exitcode(status)
            _collect_ready([slot])
            slot.pid = 0
            with contextlib.suppress(OSError):
                os.close(slot.ready_fd)
            if code == 0 or signalled:
                failed = failed or code != 0
                continue
            if slot.ready:
                slot.pause_s = 0.0
                log.warning("worker %s died (exit %d); restarting it", slot.name, code)
            else:
                slot.pause_s = min(MAX_PAUSE_S, max(FIRST_PAUSE_S, slot.pause_s * 2))
                log.error(
                    "worker %s died before it was ready (exit %d); restarting it in %.1fs",
                    slot.name,
                    code,
                    slot.pause_s,
                )
                time.sleep(slot.pause_s)  # (a signal meanwhile is in `signalled`)
                if signalled:
                    continue
            _fork(slot, serve, previous)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _fork(slot: _Slot, serve: Serve, handlers: dict[signal.Signals, Any]) -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        code = 1
        try:

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(write_fd, b"r")

            code = serve(slot.name, ready)
        except BaseException:
            log.exception("worker %s failed", slot.name)
        finally:
            os._exit(code)
    os.close(write_fd)
    slot.pid, slot.ready_fd, slot.ready = pid, read_fd, False


def _collect_ready(slots: list[_Slot]) -> None:
    """Note the children that have said they are ready (without blocking)."""
    fds = [slot.ready_fd for slot in slots if slot.pid and not slot.ready]
    if not fds:
        return
    with contextlib.suppress(InterruptedError, OSError):
        readable, _, _ = select.select(fds, [], [], 0)
        for slot in slots:
            if slot.ready_fd in readable:
                slot.ready = bool(os.read(slot.ready_fd, 1))


def _wait_for_news(slots: list[_Slot]) -> None:
    """Sleep until a child says it is ready or dies (its end of the pipe closes: the pipe
    turns readable), or a while passes."""
    fds = [slot.ready_fd for slot in slots if slot.pid]
    with contextlib.suppress(InterruptedError, OSError):
        select.select(fds, [], [], WAKE_S)


def preload_torch() -> None:
    """Import torch in the supervisor (if installed), so that each fork has it already: a
    fresh import costs seconds of CPU. Nothing that starts CUDA or a thread pool is called."""
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401


def serve_worker(make: Callable[[str], Worker]) -> Serve:
    """A :data:`Serve` that runs the worker ``make(name)`` builds; it is ready once every
    stage's loop exists (its model is loaded)."""

    def serve(name: str, ready: Callable[[], None]) -> int:
        worker = make(name)

        async def run() -> None:
            task = asyncio.create_task(worker.run())
            while not task.done() and len(worker.loops) < len(worker.stages):
                await asyncio.wait({task}, timeout=0.01)
            if not task.done():
                ready()
            await task

        asyncio.run(run())
        return 0

    return serve
