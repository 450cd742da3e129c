"""The ``batch`` decorator on its own (no Redis): the @serve.batch contract, in-process.

A decorated function or method takes a list and returns a list of the same length. Called with
one item, it batches concurrent calls: ``await handler(item)`` for async handlers, ``handler(item)``
from threads for sync ones, at most ``max_batch_size`` per call, a partial batch waiting at most
``batch_wait_timeout_s`` for more.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from workers.batching import BatchConfig, BatchContractError, BatchedHandler, batch

# -- the decorator itself --------------------------------------------------------------------


def test_bare_and_configured_forms() -> None:
    @batch
    def bare(items: list[int]) -> list[int]:
        return items

    @batch(max_batch_size=5, batch_wait_timeout_s=0.25)
    def configured(items: list[int]) -> list[int]:
        return items

    assert isinstance(bare, BatchedHandler)
    assert bare.config == BatchConfig()
    assert configured.config == BatchConfig(max_batch_size=5, batch_wait_timeout_s=0.25)
    assert bare.__name__ == "bare"  # functools.update_wrapper
    assert bare.call_batch_sync([1, 2, 3]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("size", "wait"),
    [(0, 0.01), (-1, 0.01), (1, -0.5)],
)
def test_bad_config_is_refused(size: int, wait: float) -> None:
    with pytest.raises(ValueError, match="must be >="):
        batch(max_batch_size=size, batch_wait_timeout_s=wait)


def test_call_batch_sync_refuses_an_async_handler() -> None:
    @batch
    async def handler(items: list[int]) -> list[int]:
        return items

    with pytest.raises(TypeError, match="async"):
        handler.call_batch_sync([1])


# -- async: concurrent awaits form batches ----------------------------------------------------


def test_async_function_batches_concurrent_calls() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * 2 for i in items]

    async def main() -> list[int]:
        return await asyncio.gather(*(double(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 2 for i in range(10)]
    # All ten were queued before the batcher ran: full batches, then the rest.
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sorted(i for c in calls for i in c) == list(range(10))


def test_async_method_batches_per_instance() -> None:
    class Model:
        def __init__(self, offset: int) -> None:
            self.offset = offset
            self.calls: list[list[int]] = []

        @batch(max_batch_size=8, batch_wait_timeout_s=0.5)
        async def handle(self, items: list[int]) -> list[int]:
            self.calls.append(list(items))
            return [i + self.offset for i in items]

    a, b = Model(100), Model(1000)

    async def main() -> tuple[list[int], list[int]]:
        ra = asyncio.gather(*(a.handle(i) for i in range(3)))
        rb = asyncio.gather(*(b.handle(i) for i in range(5)))
        return await ra, await rb

    ra, rb = asyncio.run(main())
    assert ra == [100, 101, 102]
    assert rb == [1000, 1001, 1002, 1003, 1004]
    # Each instance has its own batcher: the calls of one never reach the other.
    assert a.calls == [[0, 1, 2]]
    assert b.calls == [[0, 1, 2, 3, 4]]
    assert a.handle is a.handle  # one bound handler per instance
    assert isinstance(Model.handle, BatchedHandler)  # unbound access: the handler itself


def test_async_partial_batch_runs_after_the_wait_timeout() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def handler(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    async def main() -> None:
        first = asyncio.ensure_future(handler(1))
        # The lone item does not wait for seven more: it runs once 0.05 s have passed, long
        # before the second item arrives (both timers run on this one event loop).
        await asyncio.sleep(0.3)
        assert first.done(), "a partial batch waited past batch_wait_timeout_s"
        assert await asyncio.wait_for(handler(2), 5) == 2

    asyncio.run(main())
    assert calls == [[1], [2]]


def test_async_wait_timeout_gathers_items_arriving_within_it() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=8, batch_wait_timeout_s=2.0)
    async def handler(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    async def main() -> list[int]:
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(handler(i)))
            await asyncio.sleep(0.02)
        # Reaching max_batch_size runs the batch at once, without the rest of the wait.
        tasks += [asyncio.ensure_future(handler(i)) for i in range(3, 8)]
        return await asyncio.wait_for(asyncio.gather(*tasks), 1.5)

    assert asyncio.run(main()) == list(range(8))
    assert calls == [list(range(8))]


def test_async_exceptions_reach_their_callers() -> None:
    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def handler(items: list[int]) -> list[Any]:
        if 99 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    async def main() -> list[Any]:
        return await asyncio.gather(*(handler(i) for i in (1, -2, 3)), return_exceptions=True)

    one, two, three = asyncio.run(main())
    assert (one, three) == (1, 3)
    assert isinstance(two, ValueError)
    assert str(two) == "bad -2"

    async def whole() -> list[Any]:
        return await asyncio.gather(*(handler(i) for i in (1, 99)), return_exceptions=True)

    results = asyncio.run(whole())
    assert all(isinstance(r, RuntimeError) for r in results)

    async def after() -> int:
        return await handler(5)

    assert asyncio.run(after()) == 5  # a failed batch does not break the handler


# -- sync: calls from threads form batches ----------------------------------------------------


def _from_threads(handler: Any, items: list[int]) -> list[Any]:
    """Call ``handler(item)`` for each item, each from its own thread, all at once."""
    start = threading.Barrier(len(items))

    def call(item: int) -> Any:
        start.wait(5)
        return handler(item)

    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(call, item) for item in items]
        return [f.result(timeout=10) for f in futures]


def test_sync_function_batches_calls_from_threads() -> None:
    calls: list[list[int]] = []
    lock = threading.Lock()

    @batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    def square(items: list[int]) -> list[int]:
        with lock:
            calls.append(list(items))
        return [i * i for i in items]

    assert _from_threads(square, list(range(10))) == [i * i for i in range(10)]
    sizes = [len(c) for c in calls]
    assert sorted(i for c in calls for i in c) == list(range(10))
    assert max(sizes) <= 4, f"max_batch_size exceeded: {calls}"
    assert max(sizes) == 4, f"concurrent calls were not batched together: {calls}"


def test_sync_method_batches_calls_from_threads() -> None:
    class Model:
        def __init__(self) -> None:
            self.calls: list[list[int]] = []

        @batch(max_batch_size=16, batch_wait_timeout_s=0.5)
        def predict(self, items: list[int]) -> list[str]:
            self.calls.append(list(items))
            return [f"{self.__class__.__name__}:{i}" for i in items]

    model = Model()
    assert _from_threads(model.predict, list(range(6))) == [f"Model:{i}" for i in range(6)]
    assert sorted(i for c in model.calls for i in c) == list(range(6))
    assert len(model.calls) < 6, f"six concurrent calls ran one by one: {model.calls}"


def test_sync_partial_batch_runs_after_the_wait_timeout() -> None:
    calls: list[list[int]] = []

    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    def handler(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(handler(7)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a lone call waited for a full batch"
    assert result == [7]
    assert calls == [[7]]


def test_sync_exceptions_reach_their_callers_and_the_handler_goes_on() -> None:
    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    def handler(items: list[int]) -> list[Any]:
        if 99 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    with pytest.raises(RuntimeError, match="whole batch"):
        handler(99)
    with pytest.raises(ValueError, match="bad -1"):
        handler(-1)
    assert handler(4) == 4


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_full_batch_does_not_wait_out_the_timeout(is_async: bool) -> None:
    """A batch that is full at once runs at once, and its caller gets its result back: with
    max_batch_size=1 nothing can be gained by waiting the 30 s of batch_wait_timeout_s."""
    calls: list[list[int]] = []

    def body(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i + 1 for i in items]

    if is_async:

        async def handler_async(items: list[int]) -> list[int]:
            return body(items)

        handler = batch(max_batch_size=1, batch_wait_timeout_s=30)(handler_async)

        async def main() -> int:
            result: int = await asyncio.wait_for(handler(1), 5)
            return result

        def call() -> int:
            return asyncio.run(main())

    else:
        handler = batch(max_batch_size=1, batch_wait_timeout_s=30)(body)

        def call() -> int:
            result: int = handler(1)
            return result

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(3)
    assert calls == [[1]], "the full batch did not run at once"
    assert not thread.is_alive(), (
        "the caller whose batch ran is still blocked, waiting out batch_wait_timeout_s "
        "for a next batch that nobody asked for"
    )
    assert result == [2]


# -- the contract: one output per input ------------------------------------------------------


def test_length_mismatch_names_the_handler_async() -> None:
    @batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def drops_one(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        with pytest.raises(BatchContractError, match=r"drops_one returned 1 outputs for 2 inputs"):
            await drops_one.call_batch([1, 2])
        results = await asyncio.gather(drops_one(1), drops_one(2), return_exceptions=True)
        assert all(isinstance(r, BatchContractError) for r in results), results
        assert "drops_one" in str(results[0])

    asyncio.run(main())


def test_length_mismatch_names_the_handler_sync() -> None:
    class Model:
        @batch(max_batch_size=4, batch_wait_timeout_s=0.01)
        def adds_one(self, items: list[int]) -> list[int]:
            return [*items, 0]

    model = Model()
    with pytest.raises(BatchContractError, match=r"Model\.adds_one returned 3 outputs for 2"):
        model.adds_one.call_batch_sync([1, 2])
    with pytest.raises(BatchContractError, match="adds_one"):
        model.adds_one(1)


def test_a_non_list_output_breaks_the_contract() -> None:
    @batch
    def gives_a_dict(items: list[int]) -> Any:
        return {i: i for i in items}

    with pytest.raises(BatchContractError, match="gives_a_dict returned dict"):
        gives_a_dict.call_batch_sync([1])

    @batch
    def gives_a_tuple(items: list[int]) -> Any:
        return tuple(items)

    assert gives_a_tuple.call_batch_sync([1, 2]) == [1, 2]  # a tuple is fine
