"""The raw tensor payload (``fmt="tensor"``) and the tensor document that carries a tensor
inside JSON: round trips, and a DecodeError for every malformed input."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from queueing.errors import DecodeError
from queueing.keys import new_job_id
from queueing.message import (
    JSON,
    TENSOR,
    Message,
    decode_result,
    decode_tensor,
    dumps,
    encode_payload,
    from_tensor_document,
    loads,
    tensor_document,
)

ARRAYS = {
    "float32 image": np.random.default_rng(0).random((3, 32, 32), dtype=np.float32),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 3), np.int64),
    "bool": np.array([True, False, True]),
    "uint8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    "float16": np.linspace(-1, 1, 7, dtype=np.float16),
    "complex64": np.array([1 + 2j, -3j], np.complex64),
    "big-endian": np.arange(6, dtype=">i4").reshape(2, 3),
    "not contiguous": np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2],
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_raw_tensor_round_trip(array: np.ndarray[Any, Any]) -> None:
    fmt, data = encode_payload(array)
    assert fmt == TENSOR
    back = decode_tensor(data)
    assert back.shape == array.shape
    assert back.dtype.name == array.dtype.name
    np.testing.assert_array_equal(back, array)
    assert data.startswith(f"{array.dtype.name} {','.join(map(str, array.shape))}\n".encode())


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_tensor_document_round_trip(array: np.ndarray[Any, Any]) -> None:
    back = from_tensor_document(loads(dumps(tensor_document(array))))
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_a_message_carries_a_tensor_and_the_worker_gets_an_array() -> None:
    image = ARRAYS["float32 image"]
    fmt, data = encode_payload(image)
    fields = Message(new_job_id(0), data, time.time(), None, fmt).encode()
    assert fields[-2:] == ["fmt", TENSOR]
    raw = [f if isinstance(f, bytes) else f.encode() for f in fields]
    message = Message.decode(dict(zip(raw[::2], raw[1::2], strict=True)))
    value = message.value()
    assert isinstance(value, np.ndarray)
    np.testing.assert_array_equal(value, image)
    assert not value.flags.writeable  # shares the entry's bytes: no copy


def test_torch_tensors_go_raw_and_everything_else_as_json() -> None:
    fmt, data = encode_payload(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert fmt == TENSOR
    np.testing.assert_array_equal(decode_tensor(data), np.arange(6).reshape(2, 3))
    assert encode_payload([[1.0, 2.0]]) == (JSON, b"[[1.0,2.0]]")
    assert encode_payload({"x": 1}) == (JSON, b'{"x":1}')


def test_results_with_tensor_documents_come_back_as_arrays() -> None:
    result = decode_result({"embedding": tensor_document(np.ones(4, np.float32)), "label": 2})
    assert result["label"] == 2
    np.testing.assert_array_equal(result["embedding"], np.ones(4, np.float32))
    assert isinstance(decode_result(tensor_document(np.zeros(2))), np.ndarray)
    assert decode_result({"probs": [0.5, 0.5]}) == {"probs": [0.5, 0.5]}
    assert decode_result([1, 2]) == [1, 2]


def test_strings_and_objects_cannot_be_sent_raw() -> None:
    with pytest.raises(TypeError, match="cannot be sent as a tensor"):
        encode_payload(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="cannot be sent as a tensor"):
        encode_payload(np.array([{}, None], dtype=object))


BAD_PAYLOADS = {
    "no header line": b"float32 2" + b"\0" * 300,
    "unknown dtype": b"float128 1\n" + b"\0" * 16,
    "object dtype": b"object 1\n" + b"\0" * 8,
    "shape not numbers": b"float32 a,b\n",
    "negative size": b"float32 -1\n",
    "too many dims": b"uint8 " + b",".join([b"1"] * 33) + b"\n\0",
    "too few bytes": b"float32 2,2\n" + b"\0" * 15,
    "too many bytes": b"float32 2\n" + b"\0" * 9,
    "header not ascii": b"\xff\xfe 1\n\0",
    "empty": b"",
}


@pytest.mark.parametrize("data", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_a_bad_tensor_payload_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_tensor(data)
    message = Message(new_job_id(0), data, time.time(), None, TENSOR)
    with pytest.raises(DecodeError):
        message.value()


BAD_DOCUMENTS = {
    "not a dict": {"__tensor__": [1, 2]},
    "no data": {"__tensor__": {"dtype": "float32", "shape": [1]}},
    "data not base64": {"__tensor__": {"dtype": "float32", "shape": [1], "data": "!!!!"}},
    "wrong size": {"__tensor__": {"dtype": "float32", "shape": [2], "data": "AAAAAA=="}},
    "bad dtype": {"__tensor__": {"dtype": "object", "shape": [1], "data": "AAAAAAAAAAA="}},
    "shape not a list": {"__tensor__": {"dtype": "uint8", "shape": 1, "data": "AA=="}},
    "shape of floats": {"__tensor__": {"dtype": "uint8", "shape": [1.0], "data": "AA=="}},
}


@pytest.mark.parametrize("doc", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_a_bad_tensor_document_raises_decode_error(doc: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        from_tensor_document(doc)
