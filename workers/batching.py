"""The ``batch`` decorator: a handler that takes a list of inputs and returns a list of outputs.

As with Ray Serve's ``@serve.batch``, the decorated function (or method) handles a *list* and
returns a list of the same length. A worker hands it whole batches read from its stage's
stream. Called with a single item in-process, it batches concurrent calls itself: ``await
handler(item)`` for an async handler, ``handler(item)`` from several threads for a sync one.

    @batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def handle_batch(requests):
        return [r["x"] * 2 for r in requests]
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from queueing.errors import BatchlineError

T = TypeVar("T")
BatchFn = Callable[..., Any]


class BatchContractError(BatchlineError):
    """A batch handler broke its contract (it must return one output per input, in order)."""


@dataclass(frozen=True)
class BatchConfig:
    """How a stage forms batches."""

    max_batch_size: int = 32
    """The most items one call gets; under load every batch is this big."""
    batch_wait_timeout_s: float = 0.0
    """How long a partial batch waits for more items before it runs anyway. The default, as
    in Ray Serve, is not to wait: whatever is waiting is taken at once, so batches grow with
    the load; a GPU model whose cost hardly depends on the batch size gains from a few ms."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")


class BatchedHandler(Generic[T]):
    """A function or method decorated with :func:`batch`."""

    def __init__(self, fn: BatchFn, config: BatchConfig, instance: Any = None) -> None:
        self.fn = fn
        self.config = config
        self.instance = instance
        self.is_async = inspect.iscoroutinefunction(fn)
        self.name = getattr(fn, "__qualname__", repr(fn))
        self._async_batchers: dict[asyncio.AbstractEventLoop, _AsyncBatcher] = {}
        self._thread_batcher: _ThreadBatcher | None = None
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: type | None = None) -> BatchedHandler[T]:
        if instance is None:
            return self
        # One bound handler (and so one batcher) per instance, cached on the instance.
        cache = instance.__dict__.setdefault("_batchline_bound", {})
        bound: BatchedHandler[T] | None = cache.get(id(self))
        if bound is None:
            bound = cache[id(self)] = BatchedHandler(self.fn, self.config, instance)
        return bound

    def __repr__(self) -> str:
        return f"<batched {self.name} max_batch_size={self.config.max_batch_size}>"

    # -- whole batches (what workers call) ------------------------------------------------

    def call_raw(self, items: list[Any]) -> Any:
        """Call the wrapped function on a list, as is (a coroutine for an async handler)."""
        if self.instance is not None:
            return self.fn(self.instance, items)
        return self.fn(items)

    def check(self, items: Sequence[Any], outputs: Any) -> list[Any]:
        """Enforce the contract: a list (or tuple) with one output per input."""
        if not isinstance(outputs, list | tuple):
            raise BatchContractError(
                f"batch handler {self.name} returned {type(outputs).__name__}; "
                f"it must return a list with one output per input"
            )
        if len(outputs) != len(items):
            raise BatchContractError(
                f"batch handler {self.name} returned {len(outputs)} outputs for {len(items)} "
                f"inputs; it must return exactly one output per input, in the same order"
            )
        return list(outputs)

    async def call_batch(self, items: list[Any]) -> list[Any]:
        """Run one batch, awaiting an async handler (a sync one runs in this thread)."""
        outputs = self.call_raw(items)
        if inspect.isawaitable(outputs):
            outputs = await outputs
        return self.check(items, outputs)

    def call_batch_sync(self, items: list[Any]) -> list[Any]:
        """Run one batch of a sync handler in this thread."""
        if self.is_async:
            raise TypeError(f"{self.name} is async; use `await call_batch(...)`")
        return self.check(items, self.call_raw(items))

    # -- single items, batched in-process (the @serve.batch style) ---------------------------

    def __call__(self, item: Any) -> Any:
        """One input: batched with concurrent calls. Async handlers return an awaitable."""
        if self.is_async:
            loop = asyncio.get_running_loop()
            batcher = self._async_batchers.get(loop)
            if batcher is None:
                batcher = self._async_batchers[loop] = _AsyncBatcher(self)
            return batcher.submit(item)
        with self._lock:
            if self._thread_batcher is None:
                self._thread_batcher = _ThreadBatcher(self)
        return self._thread_batcher.submit(item)


@overload
def batch(fn: BatchFn, /) -> BatchedHandler[Any]: ...
@overload
def batch(
    *, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.0
) -> Callable[[BatchFn], BatchedHandler[Any]]: ...
def batch(
    fn: BatchFn | None = None,
    /,
    *,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.0,
) -> BatchedHandler[Any] | Callable[[BatchFn], BatchedHandler[Any]]:
    """Mark a function or method as a batch handler: it takes a list of inputs and returns a
    list of outputs of the same length. Works bare (``@batch``) or with settings."""
    config = BatchConfig(max_batch_size, batch_wait_timeout_s)

    def wrap(f: BatchFn) -> BatchedHandler[Any]:
        if isinstance(f, BatchedHandler):
            return BatchedHandler(f.fn, config)
        return BatchedHandler(f, config)

    return wrap(fn) if fn is not None else wrap


class _AsyncBatcher:
    """Collects concurrent ``await handler(item)`` calls into batches (one per event loop)."""

    def __init__(self, handler: BatchedHandler[Any]) -> None:
        self.handler = handler
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def submit(self, item: Any) -> Awaitable[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"batch:{self.handler.name}")
        return future

    async def _run(self) -> None:
        config = self.handler.config
        while not self.queue.empty():
            entries = [self.queue.get_nowait()]
            deadline = time.monotonic() + config.batch_wait_timeout_s
            while len(entries) < config.max_batch_size:
                if not self.queue.empty():
                    entries.append(self.queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        entries.append(await self.queue.get())
                except TimeoutError:
                    break
            items = [item for item, _ in entries]
            try:
                outputs = await self.handler.call_batch(items)
            except Exception as exc:
                for _, future in entries:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), output in zip(entries, outputs, strict=True):
                if future.done():
                    continue
                if isinstance(output, BaseException):
                    future.set_exception(output)
                else:
                    future.set_result(output)


class _ThreadBatcher:
    """Collects concurrent ``handler(item)`` calls from threads into batches."""

    def __init__(self, handler: BatchedHandler[Any]) -> None:
        self.handler = handler
        self.cond = threading.Condition()
        self.waiting: list[tuple[Any, Future[Any]]] = []
        self.running = False

    def submit(self, item: Any) -> Any:
        future: Future[Any] = Future()
        with self.cond:
            self.waiting.append((item, future))
            self.cond.notify_all()
            leader = not self.running
            if leader:
                self.running = True
        if leader:
            self._lead()
        return future.result()

    def _lead(self) -> None:
        """The caller that found no batch running forms and runs batches until none wait."""
        config = self.handler.config
        while True:
            with self.cond:
                if not self.waiting:
                    self.running = False
                    return
                deadline = time.monotonic() + config.batch_wait_timeout_s
                while len(self.waiting) < config.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                entries = self.waiting[: config.max_batch_size]
                del self.waiting[: config.max_batch_size]
                if not entries:
                    self.running = False
                    return
            try:
                outputs = self.handler.call_batch_sync([item for item, _ in entries])
            except Exception as exc:
                for _, future in entries:
                    future.set_exception(exc)
                continue
            for (_, future), output in zip(entries, outputs, strict=True):
                if isinstance(output, BaseException):
                    future.set_exception(output)
                else:
                    future.set_result(output)
