"""What every adapter shares: :class:`ModelStage`, a stage class that loads a model once per
worker process and runs one model call per batch, and the array helpers behind it.

A batch goes through three hooks, each of which an adapter (or a user's subclass) may
replace::

    stack(inputs)            -> one batch array / tensor        (one item per row)
    forward(batch)           -> the model's outputs, one call   (an array, or a dict / tuple)
    unstack(outputs, inputs) -> one output per item

An item arrives as JSON (nested lists of numbers), as a numpy array (a raw tensor payload,
see :mod:`queueing.message`) or as a tensor document. By default its output goes back in the
same form: lists for a JSON item, a tensor document for a tensor (``outputs`` changes that).
Framework imports happen in the hooks, never at import time: a process that only lists the
pipelines does not pay for torch or keras.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from queueing.errors import ConfigError
from queueing.message import (
    TENSOR_DTYPES,
    from_tensor_document,
    is_tensor_document,
    tensor_document,
)
from workers.adapters.extras import MissingExtra, missing_modules, stage_extras
from workers.batching import BatchedHandler, batch

if TYPE_CHECKING:
    import numpy as np

OutputForm = Literal["auto", "json", "tensor"]


class ModelStage:
    """A batched stage around one model. Subclass it (through an adapter) and set the class
    attributes; the worker instantiates the class once, calls ``setup(device)``, then hands
    whole batches to ``handle``."""

    extras: ClassVar[tuple[str, ...]] = ()
    """The ``batchline`` extras this stage needs (see :mod:`workers.adapters.extras`)."""
    max_batch_size: ClassVar[int] = 64
    """The most items one model call gets."""
    batch_wait_timeout_s: ClassVar[float] = 0.0
    """How long a partial batch waits for more items (see :class:`~workers.batching.BatchConfig`)."""
    dtype: ClassVar[str | None] = "float32"
    """The numpy dtype inputs are stacked into (None: whatever numpy infers)."""
    outputs: ClassVar[OutputForm] = "auto"
    """``auto``: each output in its input's form (lists for JSON, a tensor document for a
    tensor); ``json``: always lists; ``tensor``: always tensor documents."""

    handle: ClassVar[BatchedHandler[Any]]
    """The batch handler the worker runs (made per subclass, with its batch settings)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.outputs not in ("auto", "json", "tensor"):
            raise TypeError(f"{cls.__name__}.outputs must be auto, json or tensor")
        cls.handle = batch(
            max_batch_size=cls.max_batch_size, batch_wait_timeout_s=cls.batch_wait_timeout_s
        )(cls.run_batch)

    device: str
    model: Any

    def setup(self, device: str) -> None:
        """Load the model once, on ``device`` (the worker's: ``cuda`` when there is one)."""
        check_extras(self)
        self.device = device
        self.model = self.load(device)

    def load(self, device: str) -> Any:
        """The model, ready to call. Adapters implement it from their class attributes."""
        raise NotImplementedError(f"{type(self).__name__} must implement load(device)")

    def stack(self, inputs: list[Any]) -> Any:
        return stack_arrays(inputs, self.dtype)

    def forward(self, batch: Any) -> Any:
        return self.model(batch)

    def to_numpy(self, outputs: Any) -> Any:
        """The model's outputs as numpy arrays (same structure)."""
        return outputs

    def unstack(self, outputs: Any, inputs: list[Any]) -> list[Any]:
        form = self.outputs
        as_tensor = [form == "tensor" or (form == "auto" and is_tensor(x)) for x in inputs]
        return split_outputs(self.to_numpy(outputs), as_tensor)

    def run_batch(self, inputs: list[Any]) -> list[Any]:
        """One batch: stack, one forward call, unstack (``handle`` is this, batched)."""
        return self.unstack(self.forward(self.stack(inputs)), inputs)


def check_extras(stage: Any) -> None:
    """MissingExtra (with the ``pip install`` line) if an extra ``stage`` needs is missing."""
    for extra in stage_extras(stage):
        missing = missing_modules(extra)
        if missing:
            raise MissingExtra(extra, missing, type(stage).__name__)


# -- arrays ---------------------------------------------------------------------------------


def is_tensor(item: Any) -> bool:
    """Whether an item came as a tensor (a raw payload or a tensor document)."""
    import numpy as np

    return isinstance(item, np.ndarray) or is_tensor_document(item)


def stack_arrays(inputs: Sequence[Any], dtype: str | None = None) -> np.ndarray[Any, Any]:
    """One array from a batch of equally shaped items (lists, arrays or tensor documents),
    the batch as its first axis. ValueError says which item does not fit."""
    import numpy as np

    try:
        if not any(isinstance(item, np.ndarray | dict) for item in inputs):
            stacked = np.array(inputs, dtype=dtype)  # all JSON: one conversion is fastest
        else:
            arrays = [from_tensor_document(x) if isinstance(x, dict) else x for x in inputs]
            stacked = np.stack([np.asarray(a, dtype=dtype) for a in arrays])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"inputs do not stack into one array: {_shapes(inputs)}: {exc}") from exc
    if stacked.dtype == object:
        raise ValueError(f"inputs do not stack into one array of numbers: {_shapes(inputs)}")
    return stacked


def split_outputs(outputs: Any, as_tensor: Sequence[bool]) -> list[Any]:
    """One output per item from batch outputs (an array with the batch as its first axis, or
    a dict / tuple / list of them): lists, or tensor documents where ``as_tensor`` says so
    (a single number stays a number)."""
    import numpy as np

    n = len(as_tensor)
    if isinstance(outputs, dict):
        columns = {key: split_outputs(value, as_tensor) for key, value in outputs.items()}
        return [{key: column[i] for key, column in columns.items()} for i in range(n)]
    if isinstance(outputs, tuple | list):
        parts = [split_outputs(value, as_tensor) for value in outputs]
        return [[part[i] for part in parts] for i in range(n)]
    array = np.asarray(outputs)
    if array.ndim == 0 or len(array) != n:
        raise ValueError(
            f"the model returned an output of shape {array.shape} for {n} inputs; its first "
            f"axis must be the batch"
        )
    if array.ndim == 1 or array.dtype.name not in TENSOR_DTYPES or not any(as_tensor):
        rows: list[Any] = array.tolist()
        return rows
    return [
        tensor_document(row) if t else row.tolist() for row, t in zip(array, as_tensor, strict=True)
    ]


def map_arrays(fn: Callable[[Any], Any], outputs: Any) -> Any:
    """``fn`` applied to every leaf of a dict / tuple / list of outputs."""
    if isinstance(outputs, dict):
        return {key: map_arrays(fn, value) for key, value in outputs.items()}
    if isinstance(outputs, tuple | list):
        return type(outputs)(map_arrays(fn, value) for value in outputs)
    return fn(outputs)


def as_numpy(value: Any) -> Any:
    """A tensor (torch's, or any array-like) as a numpy array; float16 / bfloat16 torch
    tensors as float32, since JSON and numpy have no use for them."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    import numpy as np

    return np.asarray(value)


def required(owner: object, name: str) -> Any:
    """A class attribute that a stage needs: ConfigError naming it if it is not set."""
    value = getattr(owner, name, None)
    if value is None:
        raise ConfigError(f"{type(owner).__name__}: set the class attribute {name}")
    return value


def _shapes(inputs: Sequence[Any]) -> str:
    import numpy as np

    shapes = []
    for item in inputs[:8]:
        try:
            shapes.append(
                str(np.shape(from_tensor_document(item) if isinstance(item, dict) else item))
            )
        except (TypeError, ValueError):
            shapes.append(type(item).__name__)
    more = f" and {len(inputs) - 8} more" if len(inputs) > 8 else ""
    return f"item shapes {', '.join(shapes)}{more}"
