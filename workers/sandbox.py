"""Suspects run in a forked sandbox, so that an input that crashes the process crashes it once.

After a crash, the entries the dead process had started (suspects: one of them may be the
culprit) are run again. In the worker itself, a culprit crashed it again on every retry: about
``max_deliveries`` crashes per poison input, each a restart while its batch mates wait. Here a
batch of suspects runs in a child forked from the worker instead, which sends the outputs back
over a pipe. A child that dies (or runs past ``sandbox_timeout_s``) is replaced and the group
it died on bisected (see :meth:`Sandbox.run_isolating`) until the item that crashes is alone;
that item's output is a :class:`Crashed` (the loop dead-letters it with the reason) and its
batch mates end as usual. Nothing but the handler runs in a child: the hand-off (fenced, one
transaction) stays the worker's, so each job still ends exactly once. The worker runs nothing
else meanwhile (as for suspects run in the worker: see ``StageLoop._put_recovered``).

Fork safety: a child is forked in the stage's model thread while it is idle (no lock the
handler takes, a client's connection pool say, is held at the fork), runs only the handler on
values it was given, under torch with one intra-op thread, ignores SIGTERM / SIGINT (its worker
decides when to stop), is killed if the worker dies (Linux: it would hold the worker's Redis
connections open) and leaves by ``os._exit``. A client the handler opened (redis-py) reconnects
in the child. Where fork is missing (not POSIX), the handler is async (it belongs to the
worker's event loop), or CUDA is initialised (a forked child cannot use it), there is no
sandbox: suspects run in the worker, bisected by crashes (see ``StageLoop._recover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import struct
import sys
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, cast

from workers.batching import BatchContractError

log = logging.getLogger(__name__)

Run = Callable[[list[Any]], list[Any]]
"""Runs the stage's handler on a batch of values (in the calling thread)."""

_LENGTH = struct.Struct(">I")

_PR_SET_PDEATHSIG = 1


class Crashed(Exception):
    """An input that crashed (or hung) the process that ran it, alone in a sandbox."""


def unavailable(is_async: bool, streaming: bool = False) -> str | None:
    """Why suspects cannot run in a sandbox here (None: they can)."""
    if not hasattr(os, "fork"):
        return "this platform has no fork"
    if is_async:
        return "the handler is async"
    if streaming:
        return "the handler streams (its steps hand off chunks as they come)"
    if _cuda_initialised():
        return "CUDA is initialised (a forked child cannot use it)"
    return None


class Sandbox:
    """Runs batches of suspects in forked children; see the module docstring."""

    def __init__(self, run: Run, timeout_s: float, name: str, model_thread: Executor) -> None:
        self._run = run
        self._model_thread = model_thread
        """The thread that runs the stage's model: children are forked there, between two
        batches, so that no lock the handler takes (a client's pool) is held at the fork."""
        self.timeout_s = timeout_s
        self.name = name
        """The stage's, for the log."""
        self.forks = 0
        """Children forked so far (each costs a fork of the whole worker: ~10-20 ms with
        torch loaded on a small machine)."""
        self._exited: list[int] = []
        """Children told to exit or dead, not yet reaped (reaped without waiting, later)."""

    def usable(self) -> bool:
        """False once CUDA is initialised (lazily, since the stage started, say)."""
        return not _cuda_initialised()

    async def run_isolating(self, values: list[Any]) -> list[Any]:
        """One output per value: the handler's, an exception it raised for that item (an
        item whose share of the batch raises fails alone, as in the worker), or
        :class:`Crashed` for an item that crashed a child when it ran alone.

        The batch runs whole first. A group known to crash (a child died on it) is bisected:
        its first half runs; if that crashes too, it is the group known to crash and the
        second half runs later like any other; if not, the second half is (it is split
        without running it whole). A child survives every group that does not crash it and
        runs the next, so a child is forked per crash only: about 2 + log2(n) / 2 for one
        culprit among n, one for a batch without any (a fork of a worker costs milliseconds
        to tens of them on a small machine). An item is dead-lettered only if it crashed a
        child alone, so a crash that does not repeat (the OOM killer) costs a re-run, not a
        job."""
        outputs: list[Any] = [None] * len(values)
        todo: deque[tuple[list[int], bool]] = deque([(list(range(len(values))), False)])
        child: _Child | None = None
        try:
            while todo:
                group, crashes = todo.popleft()
                second: list[int] | None = None
                if crashes and len(group) > 1:
                    group, second = group[: len(group) // 2], group[len(group) // 2 :]
                if child is None:
                    child = await self._fork(values)
                crash = await self._try(child, group, outputs)
                if crash is not None:
                    child = None
                if second is not None:
                    # The second half crashes unless the first one did; then it may not.
                    if crash is None:
                        todo.appendleft((second, True))
                    else:
                        todo.append((second, False))
                if crash is None:
                    continue
                if len(group) > 1:
                    log.info(
                        "stage %s: %d suspects crashed the sandbox; bisecting them",
                        self.name,
                        len(group),
                    )
                    todo.appendleft((group, True))
                    continue
                why = await crash.why()
                log.warning("stage %s: an input %s alone in the sandbox", self.name, why)
                outputs[group[0]] = Crashed(
                    f"dead-lettered: it {why}, run alone in a sandbox after a crash"
                )
        finally:
            if child is not None:
                child.close()  # (it reads end of file and exits)
            self._reap_exited()
        return outputs

    async def _try(self, child: _Child, group: list[int], outputs: list[Any]) -> _Crash | None:
        """Run ``group`` (indices into the values) in ``child``, filling its ``outputs``; the
        child's crash if it died on it (or ran past the limit: then it is killed)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                sent = await child.run(group)
        except TimeoutError:
            child.kill()
            limit = f"{self.timeout_s:g}s (BATCHLINE_SANDBOX_TIMEOUT_S)"
            return _Crash(child.pid, f"ran past the sandbox's limit of {limit}")
        if sent is None:
            child.close()
            return _Crash(child.pid)
        for index, output in zip(group, sent, strict=True):
            outputs[index] = output
        return None

    async def _fork(self, values: list[Any]) -> _Child:
        loop = asyncio.get_running_loop()
        child = await loop.run_in_executor(self._model_thread, self._fork_here, values)
        self.forks += 1
        self._exited.append(child.pid)  # (reaped once it has exited: see _reap_exited)
        return child

    def _fork_here(self, values: list[Any]) -> _Child:
        """A child that runs groups of ``values`` (forked in the model thread)."""
        commands_read, commands_write = os.pipe()
        results_read, results_write = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():
            # (3.12+ warns that a multi-threaded process forks: the child runs nothing of
            # what the other threads hold, see the module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(commands_write)
            os.close(results_read)
            _serve(self._run, values, commands_read, results_write, parent)
        os.close(commands_read)
        os.close(results_write)
        return _Child(pid, commands_write, results_read)

    def _reap_exited(self) -> None:
        """Reap the children that have exited by now (one tearing down a big worker's memory
        takes tens of milliseconds: nobody waits for it)."""
        for pid in list(self._exited):
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid
            if reaped:
                self._exited.remove(pid)


class _Crash:
    """A child that died (or was killed past its limit) on a group."""

    def __init__(self, pid: int, reason: str | None = None) -> None:
        self.pid = pid
        self.reason = reason

    async def why(self) -> str:
        """The reason, with its exit code or signal (waited for only when it is needed: a
        child tearing down a big worker's memory takes tens of milliseconds to exit)."""
        if self.reason is None:
            try:
                code = await _reap(self.pid)
            except ChildProcessError:  # (reaped already)
                return "crashed the worker process"
            self.reason = f"crashed the worker process ({_exit_reason(code)})"
        return self.reason


class _Child:
    """The worker's end of one sandbox child: groups to run go out, their outputs come back,
    each a length-prefixed pickle."""

    def __init__(self, pid: int, commands: int, results: int) -> None:
        self.pid = pid
        self._commands = commands
        self._results = results
        self._buffer = bytearray()
        self._eof = False
        os.set_blocking(results, False)

    async def run(self, group: list[int]) -> list[Any] | None:
        """The outputs of the items ``group`` (indices), or None if the child died."""
        try:
            _write_frame(self._commands, pickle.dumps(group))
        except BrokenPipeError:
            return None
        frame = await self._frame()
        if frame is None:
            return None
        try:
            outputs: list[Any] = pickle.loads(frame)
        except Exception as exc:
            return [RuntimeError(f"an output cannot be read from the sandbox: {exc}")] * len(group)
        return outputs

    def close(self) -> None:
        """Tell it to exit (it reads end of file) and let go of its pipes."""
        for fd in (self._commands, self._results):
            with contextlib.suppress(OSError):
                os.close(fd)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.close()

    async def _frame(self) -> bytes | None:
        while True:
            if len(self._buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self._buffer)
                end = _LENGTH.size + size
                if len(self._buffer) >= end:
                    frame = bytes(self._buffer[_LENGTH.size : end])
                    del self._buffer[:end]
                    return frame
            if self._eof:
                return None
            await self._readable()
            try:
                while chunk := os.read(self._results, 1 << 16):
                    self._buffer += chunk
                self._eof = True
            except BlockingIOError:
                pass

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._results, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self._results)


def _serve(run: Run, values: list[Any], commands: int, results: int, parent: int) -> None:
    """The sandbox child: run each group it is sent, send its outputs back, until end of
    file on ``commands``; then exit. Never returns."""
    code = 70
    try:
        _die_with(parent)
        signal.set_wakeup_fd(-1)  # (the worker's event loop's: not ours to write to)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        torch = sys.modules.get("torch")
        if torch is not None:
            # (an OpenMP pool forked mid-life can hang its first parallel region)
            torch.set_num_threads(1)
        while (command := _read_frame(commands)) is not None:
            group: list[int] = pickle.loads(command)
            _write_frame(results, _pickle(_isolate(run, [values[i] for i in group])))
        code = 0
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Be killed when the worker dies (Linux): a sandbox left behind would hold the worker's
    Redis connections open, and with them a blocking read that still takes entries."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # (it died before prctl)
        os._exit(70)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return cast(Callable[..., int], ctypes.CDLL(None, use_errno=True).prctl)
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()
"""Linux's prctl, loaded in the worker (a child that loads it pays milliseconds)."""


def _isolate(run: Run, values: list[Any]) -> list[Any]:
    """The handler's outputs; an item whose share of the batch raises gets the exception
    (the batch is split in halves until it is alone, as StageLoop does in the worker)."""
    try:
        return run(values)
    except BatchContractError as exc:
        return [exc] * len(values)
    except Exception as exc:
        if len(values) == 1:
            return [exc]
        middle = len(values) // 2
        return _isolate(run, values[:middle]) + _isolate(run, values[middle:])


def _pickle(outputs: list[Any]) -> bytes:
    try:
        return pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        sendable = []
        for output in outputs:
            try:
                pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                output = TypeError(f"output cannot be sent from the sandbox: {exc}")
            sendable.append(output)
        return pickle.dumps(sendable, protocol=pickle.HIGHEST_PROTOCOL)


def _write_frame(fd: int, data: bytes) -> None:
    """Write a length-prefixed frame to the blocking pipe ``fd`` (a group is a few bytes:
    the worker's end never waits in practice)."""
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int) -> bytes | None:
    """One length-prefixed frame from the blocking ``fd``; None at end of file."""
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


async def _reap(pid: int) -> int:
    """The exit code of the child ``pid`` (it has closed its pipe: it is exiting)."""
    delay = 0.0005
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (it does not block)
        if reaped:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())
