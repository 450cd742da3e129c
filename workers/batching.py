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
import dataclasses
import functools
import inspect
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from queueing.errors import BatchlineError
from queueing.lanes import DEFAULT_WEIGHTS, check_weights
from queueing.live_config import AUTO, check_batch_settings
from workers.adaptive import AdaptiveWait

T = TypeVar("T")
BatchFn = Callable[..., Any]


class BatchContractError(BatchlineError):
    """A batch handler broke its contract (it must return one output per input, in order)."""


COST_READ_ITEMS = 256
"""With ``batch_size_fn``, the most items a batch may hold unless ``max_batch_items`` says."""

CostFn = Callable[[list[Any]], float]


@dataclass(frozen=True)
class BatchConfig:
    """How a stage forms batches."""

    max_batch_size: int = 32
    """The most items one call gets; under load every batch is this big. With
    ``batch_size_fn``, the most *cost* one call gets instead (e.g. tokens)."""
    batch_wait_timeout_s: float | str = 0.0
    """How long a partial batch waits for more items before it runs anyway. The default, as
    in Ray Serve, is not to wait: whatever is waiting is taken at once, so batches grow with
    the load; a GPU model whose cost hardly depends on the batch size gains from a few ms.
    ``"auto"``: wait only while waiting pays, from the handler's measured cost per batch
    (fixed + per item) and the arrival rate (see :mod:`workers.adaptive`)."""
    batch_size_fn: CostFn | None = None
    """The cost of a list of items (e.g. ``sum(len(i["tokens"]) for i in items)``): a batch
    closes before the next item would push its cost past ``max_batch_size``; an item whose
    cost alone exceeds it runs alone. None: the cost is the number of items."""
    max_latency_ms: float | None = None
    """With ``batch_wait_timeout_s="auto"``: stop waiting once the oldest item's age plus the
    batch's expected cost would pass this budget."""
    max_batch_items: int | None = None
    """With ``batch_size_fn``: the most items one call gets (default 256, or
    ``max_batch_size`` if smaller)."""
    continuous: bool = False
    """A streaming step handler (see :mod:`workers.streaming`): an item that has ended leaves
    the running batch at once and a waiting one takes its place (continuous batching)."""
    lane_weights: tuple[int, int, int] = DEFAULT_WEIGHTS
    """The priority lanes' weights (high, normal, low): each lane with entries waiting gets at
    least its weighted share of a batch (see :mod:`queueing.lanes`)."""

    def __post_init__(self) -> None:
        check_batch_settings(
            self.max_batch_size,
            self.batch_wait_timeout_s,
            self.max_latency_ms,
            self.max_batch_items,
        )
        # (a list from live settings' JSON, as the tuple it compares equal to)
        object.__setattr__(self, "lane_weights", check_weights(self.lane_weights))
        if self.batch_size_fn is not None and not callable(self.batch_size_fn):
            raise ValueError(f"batch_size_fn must be callable, got {self.batch_size_fn!r}")

    @property
    def adaptive(self) -> bool:
        return self.batch_wait_timeout_s == AUTO

    @property
    def wait_s(self) -> float:
        """The fixed wait (0 when adaptive: the adaptive wait decides, batch by batch)."""
        return 0.0 if self.adaptive else float(self.batch_wait_timeout_s)

    @property
    def max_items(self) -> int:
        """The most items one batch holds (what a worker reads at once)."""
        if self.batch_size_fn is None:
            return self.max_batch_size
        if self.max_batch_items is not None:
            return self.max_batch_items
        return min(self.max_batch_size, COST_READ_ITEMS)

    @property
    def cost_name(self) -> str | None:
        """How the registry names ``batch_size_fn`` (None: batches are bounded by count)."""
        fn = self.batch_size_fn
        if fn is None:
            return None
        return str(getattr(fn, "__qualname__", None) or type(fn).__name__)

    def cost(self, items: list[Any]) -> float:
        return len(items) if self.batch_size_fn is None else float(self.batch_size_fn(items))

    def take(self, items: list[Any]) -> int:
        """How many of ``items`` (in order) form the next batch: as many as fit both bounds,
        and at least one (an item over the cost bound alone runs alone). The cost of a prefix
        is assumed not to shrink as it grows (a binary search finds the longest that fits).
        A ``batch_size_fn`` that raises prices the items it raised on as not fitting: they
        run alone (and their handler says what is wrong with them)."""
        n = min(len(items), self.max_items)
        if self.batch_size_fn is None or n <= 1:
            return n
        if self._fits(items[:n]):
            return n
        low, high = 1, n - 1  # items[:low] is taken whatever its cost; items[:n] does not fit
        while low < high:
            middle = (low + high + 1) // 2
            if self._fits(items[:middle]):
                low = middle
            else:
                high = middle - 1
        return low

    def closed(self, items: list[Any]) -> bool:
        """Whether a batch of ``items`` can take no more (so it stops waiting)."""
        if len(items) >= self.max_items:
            return True
        if self.batch_size_fn is None or not items:
            return False
        try:
            return self.cost(items) >= self.max_batch_size
        except Exception:
            return True

    def _fits(self, items: list[Any]) -> bool:
        try:
            return self.cost(items) <= self.max_batch_size
        except Exception:
            return False

    def with_settings(self, **values: Any) -> BatchConfig:
        """A copy with live settings applied (``max_batch_size``, ``batch_wait_timeout_s``,
        ``max_latency_ms``, ``lane_weights``), validated."""
        return dataclasses.replace(self, **values)


class BatchedHandler(Generic[T]):
    """A function or method decorated with :func:`batch`."""

    def __init__(self, fn: BatchFn, config: BatchConfig, instance: Any = None) -> None:
        self.fn = fn
        self.config = config
        self.instance = instance
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.streaming = _streaming_shape(fn, config)
        """None for a plain handler; ``generator`` (a sync or async generator: each ``yield``
        is one step's outputs) or ``step`` (``continuous=True``): see :mod:`workers.streaming`."""
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
        if self.streaming is not None:
            raise TypeError(
                f"{self.name} streams its outputs: serve it in a pipeline and read its chunks "
                "with Client.stream / AsyncClient.stream (it is not callable in-process)"
            )
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
    *,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float | str = 0.0,
    batch_size_fn: CostFn | None = None,
    max_latency_ms: float | None = None,
    max_batch_items: int | None = None,
    continuous: bool = False,
    lane_weights: tuple[int, int, int] = DEFAULT_WEIGHTS,
) -> Callable[[BatchFn], BatchedHandler[Any]]: ...
def batch(
    fn: BatchFn | None = None,
    /,
    *,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float | str = 0.0,
    batch_size_fn: CostFn | None = None,
    max_latency_ms: float | None = None,
    max_batch_items: int | None = None,
    continuous: bool = False,
    lane_weights: tuple[int, int, int] = DEFAULT_WEIGHTS,
) -> BatchedHandler[Any] | Callable[[BatchFn], BatchedHandler[Any]]:
    """Mark a function or method as a batch handler: it takes a list of inputs and returns a
    list of outputs of the same length. Works bare (``@batch``) or with settings (see
    :class:`BatchConfig`): ``batch_size_fn`` bounds batches by cost instead of count,
    ``batch_wait_timeout_s="auto"`` adapts the wait to the handler's measured cost;
    ``lane_weights`` shares a batch among the priority lanes (:mod:`queueing.lanes`).

    A generator function (sync or async) is a streaming handler: each ``yield`` is one step,
    a list with one chunk per item (``StopIteration`` where an item has ended).
    ``continuous=True`` marks a streaming *step* handler instead, called once per step with the
    items still running, which waiting items join as others end (see :mod:`workers.streaming`)."""
    config = BatchConfig(
        max_batch_size,
        batch_wait_timeout_s,
        batch_size_fn,
        max_latency_ms,
        max_batch_items,
        continuous,
        lane_weights,
    )

    def wrap(f: BatchFn) -> BatchedHandler[Any]:
        if isinstance(f, BatchedHandler):
            return BatchedHandler(f.fn, config)
        return BatchedHandler(f, config)

    return wrap(fn) if fn is not None else wrap


def _streaming_shape(fn: BatchFn, config: BatchConfig) -> str | None:
    generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    if config.continuous:
        if generator:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)}: continuous=True takes a step handler (a "
                "function of the running items that returns one step's chunks), not a generator"
            )
        return "step"
    return "generator" if generator else None


def _wait_left(
    config: BatchConfig, adaptive: AdaptiveWait | None, n: int, started: float, now: float
) -> float:
    """How much longer a partial batch of ``n``, begun at ``started``, waits for more."""
    if adaptive is not None:
        return adaptive.wait_left(n, now - started, now)
    return started + config.wait_s - now


def _adaptive(config: BatchConfig) -> AdaptiveWait | None:
    return AdaptiveWait(config.max_latency_ms) if config.adaptive else None


class _AsyncBatcher:
    """Collects concurrent ``await handler(item)`` calls into batches (one per event loop)."""

    def __init__(self, handler: BatchedHandler[Any]) -> None:
        self.handler = handler
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self.carry: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        """Items that did not fit the last batch's cost bound: first in the next one."""
        self.adaptive = _adaptive(handler.config)
        self.task: asyncio.Task[None] | None = None

    def submit(self, item: Any) -> Awaitable[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        if self.adaptive is not None:
            self.adaptive.arrived(1)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"batch:{self.handler.name}")
        return future

    def _next_nowait(self) -> tuple[Any, asyncio.Future[Any]] | None:
        if self.carry:
            return self.carry.popleft()
        if not self.queue.empty():
            return self.queue.get_nowait()
        return None

    async def _gather(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        config = self.handler.config
        first = self._next_nowait()
        assert first is not None
        entries = [first]
        items = [first[0]]
        started = time.monotonic()
        while not config.closed(items):
            entry = self._next_nowait()
            if entry is None:
                remaining = _wait_left(config, self.adaptive, len(items), started, time.monotonic())
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        entry = await self.queue.get()
                except TimeoutError:
                    if self.adaptive is None:
                        break
                    continue  # the adaptive wait is asked again
            if config.take([*items, entry[0]]) <= len(items):
                self.carry.appendleft(entry)  # over the cost bound: first in the next batch
                break
            entries.append(entry)
            items.append(entry[0])
        return entries

    async def _run(self) -> None:
        while self.carry or not self.queue.empty():
            entries = await self._gather()
            items = [item for item, _ in entries]
            clock = time.perf_counter()
            try:
                outputs = await self.handler.call_batch(items)
            except Exception as exc:
                for _, future in entries:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.adaptive is not None:
                self.adaptive.observe(len(items), time.perf_counter() - clock)
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
        self.adaptive = _adaptive(handler.config)

    def submit(self, item: Any) -> Any:
        future: Future[Any] = Future()
        with self.cond:
            self.waiting.append((item, future))
            if self.adaptive is not None:
                self.adaptive.arrived(1)
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
                started = time.monotonic()
                while not config.closed([item for item, _ in self.waiting]):
                    now = time.monotonic()
                    remaining = _wait_left(config, self.adaptive, len(self.waiting), started, now)
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                size = config.take([item for item, _ in self.waiting])
                entries = self.waiting[:size]
                del self.waiting[:size]
                if not entries:
                    self.running = False
                    return
            clock = time.perf_counter()
            try:
                outputs = self.handler.call_batch_sync([item for item, _ in entries])
            except Exception as exc:
                for _, future in entries:
                    future.set_exception(exc)
                continue
            if self.adaptive is not None:
                self.adaptive.observe(len(entries), time.perf_counter() - clock)
            for (_, future), output in zip(entries, outputs, strict=True):
                if isinstance(output, BaseException):
                    future.set_exception(output)
                else:
                    future.set_result(output)
