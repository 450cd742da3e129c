"""The framework adapters' examples through batchline, against the same stage called in this
process, and what JSON costs an image model against raw tensor payloads.

``<model>-client`` (``image-json``, ``image-tensor``, ``iris``, ``keras``, ``cartpole``): one
worker process (``python -m batchline worker <pipeline>``) and this process as the client,
measured exactly as ``mlp-client`` (see :mod:`bench.scenarios_queue`: a ``Client.map``
throughput pass with ``--max-in-flight`` jobs outstanding, then a closed loop at concurrency
1). ``image-json`` sends each 3x32x32 float32 image as nested JSON lists, ``image-tensor`` as
the numpy array itself (``fmt=tensor``: a dtype/shape header and the raw bytes); ``cartpole``
sends observations as numpy arrays (as an agent does), ``iris`` and ``keras`` JSON lists.

``<model>-inprocess``: the same stage, loaded in this process as a worker loads it (the same
``setup``, the same torch thread count: ``workers.device.torch_threads``, half the cores by
default, ``--torch-threads`` wins), run under ``torch.inference_mode`` as the worker runs it,
on the SAME sequence of batch sizes the worker formed in ``<model>-client`` (full batches
when that did not run), each batch paying the payload work a worker pays: decoding every
item's payload as ``Message.value`` does (orjson, or the tensor codec), the batch handler
(stack, one model call, split), and orjson-encoding every output. No Redis, no processes: the
limit batchline approaches. Goal for every adapter: ``-client >= 0.8 x -inprocess``.

Each ``-inprocess`` result also reports the handler alone (``handler_items_per_s``) and the
payload codec's cost per item (``decode_us_per_item``, ``client_encode_us_per_item``,
``payload_bytes``), and the derived figure ``image raw tensor / JSON`` gives what raw tensors
buy end to end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import Context
from bench.registry import Derived, Goal, scenario
from bench.scenarios_queue import _repeat, inprocess_result, run_client_scenario
from bench.stats import Result
from bench.workloads import Workload
from queueing.message import JSON, decode_tensor, dumps, encode_payload, loads

POOL = 256
"""Distinct inputs per workload (longer runs cycle through them)."""
GOAL = 0.8


@dataclass(frozen=True)
class Model:
    """One adapter example as the bench drives it."""

    key: str
    """Scenario prefix: ``<key>-client``, ``<key>-inprocess``."""
    pipeline: str
    stage: str
    make_pool: Callable[[], list[Any]]
    check: Callable[[Any, Any], bool]
    items: tuple[int, int]
    """Throughput-pass items (full, --quick)."""

    @property
    def workload(self) -> Workload:
        def make(n: int) -> list[Any]:
            pool = self.make_pool()
            return [pool[i % len(pool)] for i in range(n)]

        return Workload(self.pipeline, make, self.check)


def _images_json() -> list[Any]:
    from pipelines.examples.image_classifier import synthetic_images

    return [image.tolist() for image in synthetic_images(POOL, seed=1)]


def _images_tensor() -> list[Any]:
    from pipelines.examples.image_classifier import synthetic_images

    return list(synthetic_images(POOL, seed=1))


def _image_check(value: Any, output: Any) -> bool:
    probs = output.get("probs") if isinstance(output, dict) else None
    return (
        isinstance(probs, list)
        and len(probs) == 10
        and abs(sum(probs) - 1.0) < 1e-3
        and max(range(10), key=lambda k: probs[k]) == output.get("label")
    )


def _iris_pool() -> list[Any]:
    import numpy as np

    from pipelines.examples.iris import SEED

    rng = np.random.default_rng(SEED)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    return [[round(float(v), 1) for v in rng.uniform(low, high)] for _ in range(POOL)]


def _iris_check(value: Any, output: Any) -> bool:
    probs = output.get("predict_proba") if isinstance(output, dict) else None
    return (
        output.get("predict") in ("setosa", "versicolor", "virginica")
        and isinstance(probs, list)
        and abs(sum(probs) - 1.0) < 1e-6
    )


def _tabular_pool() -> list[Any]:
    from pipelines.examples.keras_tabular import tabular_data

    x, _ = tabular_data(POOL, seed=2)
    return [[round(float(v), 4) for v in row] for row in x]


def _tabular_check(value: Any, output: Any) -> bool:
    return isinstance(output, list) and len(output) == 3 and abs(sum(output) - 1.0) < 1e-4


def _observations() -> list[Any]:
    import gymnasium

    env = gymnasium.make("CartPole-v1")
    observations = []
    obs, _ = env.reset(seed=0)
    for step in range(POOL):
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(step % 2)
        if terminated or truncated:
            obs, _ = env.reset(seed=step)
    env.close()
    return observations


def _action_check(value: Any, output: Any) -> bool:
    return output in (0, 1)


IMAGE_JSON = Model(
    "image-json", "image_classifier", "image_classifier.classify", _images_json, _image_check,
    (5_000, 1_000),
)  # fmt: skip
IMAGE_TENSOR = Model(
    "image-tensor", "image_classifier", "image_classifier.classify", _images_tensor,
    _image_check, (20_000, 2_000),
)  # fmt: skip
IRIS = Model("iris", "iris", "iris.predict", _iris_pool, _iris_check, (50_000, 5_000))
KERAS = Model(
    "keras", "keras_tabular", "keras_tabular.predict", _tabular_pool, _tabular_check,
    (50_000, 5_000),
)  # fmt: skip
CARTPOLE = Model(
    "cartpole", "cartpole", "cartpole.act", _observations, _action_check, (50_000, 5_000)
)


def run_client(ctx: Context, model: Model) -> Result:
    name = f"{model.key}-client"
    result = run_client_scenario(ctx, name, model.workload, model.items[0], quick=model.items[1])
    # Kept per scenario: the two image scenarios share one stage name.
    ctx.shared[f"adapter_batches:{model.key}"] = ctx.shared.get(f"batch_sizes:{model.stage}")
    return result


@contextlib.contextmanager
def _worker_threads(ctx: Context) -> Iterator[int]:
    """torch's threads as a worker sets them (or --torch-threads), restored afterwards."""
    import torch

    from workers.device import limit_torch_threads, torch_threads

    previous = torch.get_num_threads()
    threads = torch_threads(ctx.options.torch_threads or ctx.settings("unused").torch_threads)
    limit_torch_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def run_inprocess(ctx: Context, model: Model) -> Result:
    import torch

    from pipelines.examples import PIPELINES
    from workers.device import resolve_device

    name = f"{model.key}-inprocess"
    pipeline = next(p for p in PIPELINES if p.name == model.pipeline)
    device = resolve_device(ctx.settings("unused").device)
    seen: list[int] | None = ctx.shared.get(f"adapter_batches:{model.key}")
    size = pipeline.compile().stages[model.stage].config.max_batch_size
    n = ctx.count(*model.items)
    sizes = list(seen) if seen else [size] * (n // size) + ([n % size] if n % size else [])
    origin = f"replayed from {model.key}-client" if seen else f"{model.key}-client did not run"
    pool = model.make_pool()
    with _worker_threads(ctx) as threads:
        handler = pipeline.compile().stages[model.stage].load(device)
        began = time.perf_counter()
        payloads = [encode_payload(value) for value in pool]
        encode_us = (time.perf_counter() - began) / len(pool) * 1e6

        def decode(item: tuple[str, bytes]) -> Any:
            fmt, data = item
            return loads(data) if fmt == JSON else decode_tensor(data)

        began = time.perf_counter()
        decoded = [decode(item) for item in payloads]
        decode_us = (time.perf_counter() - began) / len(pool) * 1e6

        def batch_of(start: int, size: int) -> list[int]:
            return [(start + k) % len(pool) for k in range(size)]

        def one_batch(start: int, size: int) -> float:
            indexes = batch_of(start, size)
            began = time.perf_counter()
            values = [decode(payloads[i]) for i in indexes]
            outputs = handler.call_batch_sync(values)
            encoded = [dumps(output) for output in outputs]
            took = time.perf_counter() - began
            if not all(model.check(pool[i], out) for i, out in zip(indexes, outputs, strict=True)):
                raise AssertionError(f"{name}: wrong outputs")
            assert len(encoded) == size
            return took

        def handler_only(start: int, size: int) -> float:
            values = [decoded[i] for i in batch_of(start, size)]
            began = time.perf_counter()
            handler.call_batch_sync(values)
            return time.perf_counter() - began

        with torch.inference_mode():
            for _ in range(10):  # warm-up
                one_batch(0, sizes[0])
            items, seconds, timed, robust = _repeat(ctx, sizes, one_batch)
            handler_items, handler_s, _, _ = _repeat(ctx, sizes, handler_only)
            idle = [one_batch(i, 1) for i in range(100)]
    return inprocess_result(
        name,
        items,
        seconds,
        timed,
        idle,
        device,
        origin,
        sizes,
        threads,
        robust,
        handler_items_per_s=handler_items / handler_s,
        decode_us_per_item=decode_us,
        client_encode_us_per_item=encode_us,
        payload_bytes=sum(len(data) for _, data in payloads) / len(payloads),
        payload_format=payloads[0][0],
    )


def _register(
    model: Model, *, extra_goals: Sequence[Goal] = (), derived: Sequence[Derived] = ()
) -> None:
    what = {
        "image-json": "3x32x32 torch CNN, images as JSON lists",
        "image-tensor": "3x32x32 torch CNN, images as raw tensors",
        "iris": "scikit-learn iris pipeline",
        "keras": "Keras 3 tabular model (torch backend)",
        "cartpole": "CartPole torch policy, observations as raw tensors",
    }[model.key]
    scenario(
        f"{model.key}-client",
        f"{what} via Client.map, one batchline worker process",
        goals=[Goal(f"{model.key}-inprocess", GOAL), *extra_goals],
        derived=derived,
    )(lambda ctx: run_client(ctx, model))
    scenario(
        f"{model.key}-inprocess",
        f"{what}: the stage in this process, same batch sizes, payload decode/encode per item",
    )(lambda ctx: run_inprocess(ctx, model))


_register(IMAGE_JSON)
_register(
    IMAGE_TENSOR,
    extra_goals=[Goal("image-json-client")],
    derived=[
        Derived(
            "image raw tensor / JSON items/s",
            ("image-tensor-client", "image-json-client"),
            lambda r: r["image-tensor-client"].items_per_s / r["image-json-client"].items_per_s,
            unit="x",
            formula="items/s(image-tensor-client) / items/s(image-json-client)",
        ),
    ],
)
# Small models cost a few microseconds an item: the queue's own ceiling (echo) bounds them.
_register(IRIS, extra_goals=[Goal("echo-client")])
_register(KERAS, extra_goals=[Goal("echo-client")])
_register(CARTPOLE, extra_goals=[Goal("echo-client")])
