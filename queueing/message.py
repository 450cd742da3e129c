"""The message on the wire: one stream entry, and the payload codec.

A stream entry is a flat field map. :class:`Message` is its frozen, typed form;
``Message.decode`` raises :class:`~queueing.errors.DecodeError` on anything malformed, so a
worker can fail that job and go on.

Payloads are JSON (``fmt`` ``json``, the default) or one raw tensor (``fmt`` ``tensor``): a
one-line text header, ``<dtype> <comma-separated shape>\n``, then the array's bytes in C
order, little-endian (``float32 3,32,32\n`` + 12288 bytes). A worker gets a tensor payload as
a read-only numpy array. Results are JSON, so a tensor travels back (and between stages) as a
*tensor document*, ``{"__tensor__": {"dtype": ..., "shape": [...], "data": <base64>}}``, which
the Python client turns back into an array.
"""

from __future__ import annotations

import base64
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from queueing.errors import DecodeError
from queueing.keys import is_job_id

if TYPE_CHECKING:
    import numpy as np

JSON = "json"
TENSOR = "tensor"
TENSOR_KEY = "__tensor__"
"""The one key of a tensor document (a tensor inside JSON)."""
TENSOR_DTYPES = frozenset(
    {
        *("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        *("float16", "float32", "float64", "complex64", "complex128"),
    }
)
"""The dtypes a tensor payload may have (numbers only: never objects)."""
_NAMES = ", ".join(sorted(TENSOR_DTYPES))
_MAX_HEADER = 256
_MAX_DIMS = 32

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Encode a JSON-compatible value (numpy arrays included) with orjson."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError as exc:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc


def loads(data: bytes | str) -> Any:
    """Decode JSON; a malformed document raises DecodeError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Message:
    """One item travelling through a stage's stream."""

    job_id: str
    data: bytes
    """The encoded payload (see ``fmt``)."""
    enqueued_at: float
    """When this entry was added (unix seconds): the start of its queue wait."""
    deadline: float | None = None
    """Unix seconds after which the job must not reach a model."""
    fmt: str = JSON
    """Payload encoding; ``json`` is orjson."""

    def encode(self) -> list[bytes | str]:
        """Flat field list, ready for XADD (and for the Lua scripts that XADD it; FINISH
        fills the ``data`` field of a join's entry itself)."""
        fields: list[bytes | str] = [
            "job",
            self.job_id,
            "data",
            self.data,
            "at",
            repr(self.enqueued_at),
        ]
        if self.deadline is not None:
            fields += ["dl", repr(self.deadline)]
        if self.fmt != JSON:
            fields += ["fmt", self.fmt]
        return fields

    @classmethod
    def decode(cls, fields: Mapping[bytes, bytes] | None) -> Message:
        """Parse a stream entry's fields; DecodeError says what is wrong."""
        if not fields:
            raise DecodeError("entry has no fields (was its payload deleted?)")
        job_id = _text(fields, b"job")
        if not is_job_id(job_id):
            raise DecodeError(f"entry names no valid job id: {job_id!r}")
        data = fields.get(b"data")
        if data is None:
            raise DecodeError(f"entry of job {job_id} has no data field")
        try:
            enqueued_at = float(_text(fields, b"at"))
            deadline = float(fields[b"dl"]) if b"dl" in fields else None
        except ValueError as exc:
            raise DecodeError(f"entry of job {job_id} has a bad timestamp: {exc}") from exc
        fmt = _text(fields, b"fmt") if b"fmt" in fields else JSON
        return cls(job_id, data, enqueued_at, deadline, fmt)

    def value(self) -> Any:
        """The decoded payload: JSON, or a read-only numpy array for a tensor payload."""
        if self.fmt == JSON:
            return loads(self.data)
        if self.fmt == TENSOR:
            return decode_tensor(self.data)
        raise DecodeError(f"job {self.job_id}: unknown payload format {self.fmt!r}")


# -- tensors --------------------------------------------------------------------------------


def encode_payload(value: Any) -> tuple[str, bytes]:
    """``(fmt, data)`` of a submitted value: a numpy array (or a torch tensor) goes as a raw
    tensor, anything else as JSON."""
    array = _as_array(value)
    if array is None:
        return JSON, dumps(value)
    name, shape, raw = _raw(array)
    return TENSOR, b"%s %s\n%s" % (name.encode(), ",".join(map(str, shape)).encode(), raw)


def decode_tensor(data: bytes) -> np.ndarray[Any, Any]:
    """The array of a tensor payload (read-only, sharing ``data``); DecodeError says what is
    wrong with its header, or that its size does not match it."""
    end = data.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        raise DecodeError(f"tensor payload has no header line in its first {_MAX_HEADER} bytes")
    try:
        name, _, dims = data[:end].decode("ascii").partition(" ")
        shape = [int(d) for d in dims.split(",")] if dims else []
    except (UnicodeDecodeError, ValueError):
        header = data[:end][:64]
        raise DecodeError(f"bad tensor header {header!r}: want '<dtype> <d0>,<d1>,...'") from None
    return _array(name, shape, memoryview(data)[end + 1 :])


def tensor_document(array: Any) -> dict[str, Any]:
    """A tensor inside JSON: ``{"__tensor__": {"dtype", "shape", "data": base64 bytes}}``."""
    name, shape, raw = _raw(array)
    data = base64.b64encode(raw).decode("ascii")
    return {TENSOR_KEY: {"dtype": name, "shape": list(shape), "data": data}}


def is_tensor_document(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and TENSOR_KEY in value


def from_tensor_document(value: Any) -> np.ndarray[Any, Any]:
    """The array of a tensor document; DecodeError if it is not a well-formed one."""
    doc = value.get(TENSOR_KEY) if isinstance(value, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), str):
        raise DecodeError(f'a tensor document is {{"{TENSOR_KEY}": {{dtype, shape, data}}}}')
    try:
        raw = base64.b64decode(doc["data"], validate=True)
    except ValueError as exc:  # binascii.Error is one
        raise DecodeError(f"tensor document data is not base64: {exc}") from exc
    return _array(doc.get("dtype"), doc.get("shape"), raw)


def decode_result(value: Any) -> Any:
    """A result as the Python client returns it: a tensor document, or one among the values
    of a dict, becomes a numpy array."""
    if isinstance(value, dict):
        if is_tensor_document(value):
            return from_tensor_document(value)
        if any(is_tensor_document(v) for v in value.values()):
            return {k: decode_result(v) for k, v in value.items()}
    return value


def _as_array(value: Any) -> np.ndarray[Any, Any] | None:
    """``value`` if it is a numpy array, as one if it is a torch tensor. A module that has not
    been imported cannot have made it, so neither is imported here."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        same: np.ndarray[Any, Any] = value
        return same
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        array: np.ndarray[Any, Any] = value.detach().cpu().numpy()
        return array
    return None


def _raw(array: Any) -> tuple[str, tuple[int, ...], memoryview]:
    """(dtype name, shape, little-endian C-order bytes) of an array; TypeError for a dtype
    outside TENSOR_DTYPES."""
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype.name not in TENSOR_DTYPES:
        raise TypeError(f"a {arr.dtype} array cannot be sent as a tensor: use one of {_NAMES}")
    # (ascontiguousarray makes a 0-d array 1-d: keep the shape it had)
    flat = np.ascontiguousarray(arr.reshape(-1), dtype=arr.dtype.newbyteorder("<"))
    return arr.dtype.name, arr.shape, flat.view(np.uint8).data


def _array(name: Any, shape: Any, raw: bytes | memoryview) -> np.ndarray[Any, Any]:
    """The array that ``raw`` holds, checked against its dtype and shape (DecodeError)."""
    import numpy as np

    if name not in TENSOR_DTYPES:
        raise DecodeError(f"tensor dtype {name!r} is not one of {_NAMES}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise DecodeError(f"bad tensor shape {shape!r}: want at most {_MAX_DIMS} sizes >= 0")
    dtype = np.dtype(name).newbyteorder("<")
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise DecodeError(f"a {name} tensor of shape {shape} needs {need} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def job_id_of(fields: Mapping[bytes, bytes] | None) -> str | None:
    """The job id of an entry, if it names a valid one (to fail an otherwise bad entry)."""
    raw = (fields or {}).get(b"job")
    if raw is None:
        return None
    try:
        job_id = raw.decode()
    except UnicodeDecodeError:
        return None
    return job_id if is_job_id(job_id) else None


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str:
    raw = fields.get(name)
    if raw is None:
        raise DecodeError(f"entry has no {name.decode()!r} field")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"entry field {name.decode()!r} is not text") from exc
