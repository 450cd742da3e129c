"""The message on the wire: one stream entry, and the payload codec.

A stream entry is a flat field map. :class:`Message` is its frozen, typed form;
``Message.decode`` raises :class:`~queueing.errors.DecodeError` on anything malformed, so a
worker can fail that job and go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from queueing.errors import DecodeError
from queueing.keys import is_job_id

JSON = "json"

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
        """The decoded payload."""
        if self.fmt != JSON:
            raise DecodeError(f"job {self.job_id}: unknown payload format {self.fmt!r}")
        return loads(self.data)


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
