"""Checking a submission before anything is queued: the body's JSON and shape, then each input
against the pipeline's input schema (JSON Schema, from the registry).

Bodies are parsed here by hand (orjson, then a shape check) rather than by FastAPI, so that the
413 of :mod:`api.limits` and the 422 messages ("what and where") stay ours. What the parser
takes but the rest could not carry is refused here, once: JSON nested deeper than
:data:`MAX_DEPTH` (orjson parses 1,024 levels, encodes 254; jsonschema recurses), and integers
that orjson would silently turn into floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from api.documents import MAX_RESULT_TTL_S
from api.errors import InvalidInput, UnsupportedMediaType, cut
from api.schemas import Check, compile_schema
from queueing.client.core import MAX_SUBMIT_MANY
from queueing.errors import ConfigError
from queueing.lanes import LANES, check_lane
from queueing.registry import PipelineSpec
from queueing.webhooks import check_url

_FIELDS = {"input", "inputs", "timeout_s", "webhook", "result_ttl_s", "priority"}
MAX_DEPTH = 64
"""How deep arrays and objects may nest in a body, the body's own object being the first."""
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
"""The integers a body may hold: what orjson parses as integers (it parses any other as a
float, silently losing digits)."""
_SKETCH = bytes(57 if 48 <= b <= 57 else 91 if b in b"[{" else 32 for b in range(256))
"""A body's sketch: its digits as 9s, its brackets (``[`` and ``{``) as ``[``, the rest blank.
One ``bytes.translate`` tells whether a body could nest too deep or hold an integer out of
range: only then are its values walked (a walk, or a regular expression, on every body cost
several times the parse itself)."""
_LONG_DIGITS = b"9" * 19
"""The shortest integer out of range has 19 digits: a body without 19 digits in a row has
none."""


def check_content_type(value: str | None) -> None:
    """UnsupportedMediaType unless ``value`` (a request's Content-Type) is JSON:
    ``application/json`` or ``application/<anything>+json``, with any parameters."""
    media_type = (value or "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/")
        and media_type.endswith("+json")
        and len(media_type) > len("application/+json")
    ):
        return
    got = f"got {cut(value)!r}" if value else "there is none"
    raise UnsupportedMediaType(
        f"the body must be JSON, sent with 'Content-Type: application/json'; {got}"
    )


@dataclass(frozen=True)
class Submission:
    """A parsed ``{"input": ...}`` or ``{"inputs": [...]}`` body."""

    inputs: list[Any]
    many: bool
    """Whether the body was ``inputs`` (the answer is then a list, one per input)."""
    timeout_s: float | None
    webhook: str | None = None
    """A URL each job's document is POSTed to when it ends (see queueing.webhooks)."""
    result_ttl_s: int | None = None
    """How long each job's record (and result) is kept once it has ended, in seconds (None:
    the gateway's default)."""
    priority: str | None = None
    """The jobs' priority lane (``high``, ``normal``, ``low``; None: ``normal``)."""


def parse_submission(body: bytes, *, allow_many: bool = True) -> Submission:
    """Decode and check a submission body; InvalidInput says what is wrong and where."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"the body is not valid JSON: {exc}", [{"where": "body", "message": str(exc)}]
        ) from None
    sketch = body.translate(_SKETCH)
    if sketch.count(b"[") > MAX_DEPTH:
        _check_depth(doc)
    if _LONG_DIGITS in sketch:
        _check_integers(body)
    expected = '{"input": ...}' + (' or {"inputs": [...]}' if allow_many else "")
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"the body must be a JSON object, {expected}; got {type(doc).__name__}",
            [{"where": "body", "message": f"expected an object, got {_json_type(doc)}"}],
        )
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {cut(', '.join(map(repr, unknown)))}; the body is {expected} "
            'with optional "timeout_s", "webhook", "result_ttl_s", "priority"',
            [{"where": f"body.{name}", "message": "unknown field"} for name in unknown],
        )
    if "inputs" in doc and not allow_many:
        raise InvalidInput(
            'the synchronous endpoint runs one input ({"input": ...}); submit several to '
            "POST /v1/pipelines/{name}/jobs",
            [{"where": "body.inputs", "message": "not accepted here"}],
        )
    if ("input" in doc) == ("inputs" in doc):
        raise InvalidInput(
            f"the body must hold exactly one of the fields: {expected}",
            [{"where": "body", "message": 'needs exactly one of "input" and "inputs"'}],
        )
    timeout_s = doc.get("timeout_s")
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise InvalidInput(
            f"timeout_s must be a number of seconds > 0, got {cut(orjson.dumps(timeout_s).decode())}",
            [{"where": "body.timeout_s", "message": "must be a number > 0"}],
        )
    webhook = doc.get("webhook")
    if webhook is not None:
        try:
            if not isinstance(webhook, str):
                raise ValueError(f"webhook must be a string URL, got {_json_type(webhook)}")
            check_url(webhook)
        except ValueError as exc:
            raise InvalidInput(
                cut(str(exc)), [{"where": "body.webhook", "message": "not an http(s) URL"}]
            ) from None
    result_ttl_s = _result_ttl(doc.get("result_ttl_s"))
    priority = doc.get("priority")
    if priority is not None:
        try:
            check_lane(priority)
        except ValueError:
            lanes = ", ".join(f'"{lane}"' for lane in LANES)
            raise InvalidInput(
                f"priority must be one of {lanes}, got {cut(orjson.dumps(priority).decode())}",
                [{"where": "body.priority", "message": f"must be one of {lanes}"}],
            ) from None
    if "input" in doc:
        return Submission(
            [doc["input"]],
            False,
            None if timeout_s is None else float(timeout_s),
            webhook,
            result_ttl_s,
            priority,
        )
    inputs = doc["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(
            '"inputs" must be a non-empty JSON array',
            [
                {
                    "where": "body.inputs",
                    "message": f"expected a non-empty array, got {_json_type(inputs)}",
                }
            ],
        )
    if len(inputs) > MAX_SUBMIT_MANY:
        raise InvalidInput(
            f'"inputs" holds {len(inputs)} inputs; one request takes at most {MAX_SUBMIT_MANY}',
            [{"where": "body.inputs", "message": f"at most {MAX_SUBMIT_MANY} items"}],
        )
    return Submission(
        inputs,
        True,
        None if timeout_s is None else float(timeout_s),
        webhook,
        result_ttl_s,
        priority,
    )


def _result_ttl(value: Any) -> int | None:
    """A body's ``result_ttl_s``: whole seconds, 1 to MAX_RESULT_TTL_S."""
    if value is None:
        return None
    whole = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value == int(value)
    )
    if not whole or not 1 <= value <= MAX_RESULT_TTL_S:
        bound = f"an integer 1..{MAX_RESULT_TTL_S}"
        raise InvalidInput(
            f"result_ttl_s must be {bound} (seconds), got {cut(orjson.dumps(value).decode())}",
            [{"where": "body.result_ttl_s", "message": f"must be {bound}"}],
        )
    return int(value)


def _check_depth(doc: Any) -> None:
    """InvalidInput if ``doc`` nests arrays and objects deeper than MAX_DEPTH (found without
    recursion)."""
    path = _find(doc, lambda value, depth: depth > MAX_DEPTH and isinstance(value, dict | list))
    if path is not None:
        where = _body_where(path)
        raise InvalidInput(
            f"the body nests arrays and objects deeper than {MAX_DEPTH} levels, at {where}",
            [{"where": where, "message": f"nested deeper than {MAX_DEPTH} levels"}],
        )


class _OutOfRange(str):
    """An integer's text that orjson would have parsed as a float."""


def _parse_int(text: str) -> int | _OutOfRange:
    if len(text) > 21:  # (and never int() on thousands of digits)
        return _OutOfRange(text)
    value = int(text)
    return value if MIN_INT <= value <= MAX_INT else _OutOfRange(text)


def _check_integers(body: bytes) -> None:
    """InvalidInput if the body holds an integer outside MIN_INT..MAX_INT. orjson parses those
    as floats without a word, so the body is parsed again by the standard library, which hands
    over each integer's text (only for a body with 19 digits in a row somewhere: rarely)."""
    try:
        # Nested at most MAX_DEPTH deep by now: the recursive parser is safe.
        doc = json.loads(body, parse_int=_parse_int)
    except ValueError:  # (not expected: orjson took it, and this parser is the looser one)
        return
    path = _find(doc, lambda value, depth: type(value) is _OutOfRange)
    if path is not None:
        where = _body_where(path)
        raise InvalidInput(
            f"the integer at {where} is out of range: integers must be from -2**63 to 2**64-1 "
            "(send a larger one as a string, or as a float if it may be rounded)",
            [{"where": where, "message": "integer out of range -2**63 .. 2**64-1"}],
        )


def _find(doc: Any, bad: Callable[[Any, int], bool]) -> list[str | int] | None:
    """The path to the first value in ``doc`` (depth first) for which ``bad(value, depth)``
    (the body being at depth 1, its fields at 2...), None if none is; without recursion."""
    # Each entry: (value, depth, node), node being (parent node, key) or None: paths are
    # built only for the value found, whatever the number of values.
    Node = tuple[Any, str | int] | None
    stack: list[tuple[Any, int, Node]] = [(doc, 1, None)]
    while stack:
        value, depth, node = stack.pop()
        if bad(value, depth):
            path: list[str | int] = []
            while node is not None:
                node, key = node
                path.append(key)
            return path[::-1]
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        stack.extend((child, depth + 1, (node, key)) for key, child in children)
    return None


def _body_where(path: list[str | int]) -> str:
    """Where a value is in a body, named as the 422s name it (``input[0].name``)."""
    if path and path[0] in ("input", "inputs"):
        return _where(str(path[0]), path[1:])
    return _where("body", path)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array" if value else "an empty array"
    return "object"


class SchemaChecker:
    """Validates inputs against each pipeline's ``input_schema``, compiling each schema once
    (and again when the registry publishes a different one)."""

    def __init__(self) -> None:
        self._validators: dict[str, tuple[Mapping[str, Any], Any, Check | None]] = {}

    def check(self, spec: PipelineSpec, submission: Submission) -> None:
        """InvalidInput listing each violation with where it is (``input.name``,
        ``inputs[2][0]``...)."""
        if spec.input_schema is None:
            return
        validator, compiled = self._validator(spec)
        if compiled is not None and all(compiled(value) for value in submission.inputs):
            return  # (see api.schemas: jsonschema, below, says what is wrong)
        errors: list[dict[str, str]] = []
        for index, value in enumerate(submission.inputs):
            root = f"inputs[{index}]" if submission.many else "input"
            for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path)):
                # (jsonschema's messages repeat the value: cut, a 1 MB input is no 2 MB error)
                errors.append(
                    {"where": cut(_where(root, error.absolute_path)), "message": cut(error.message)}
                )
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InvalidInput(
                f"input does not match the input schema of pipeline {spec.name!r}: "
                f"{first['where']}: {first['message']}{more}",
                errors,
            )

    def _validator(self, spec: PipelineSpec) -> tuple[Any, Check | None]:
        """jsonschema's validator of the spec's schema, and its compiled check (None if the
        schema leaves the subset that api.schemas compiles)."""
        schema = spec.input_schema
        assert schema is not None
        cached = self._validators.get(spec.name)
        if cached is not None and cached[0] == schema:
            return cached[1], cached[2]
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(
                f"pipeline {spec.name!r} declares an invalid input schema: {exc.message}"
            ) from None
        validator = cls(schema)
        compiled = compile_schema(schema)
        self._validators[spec.name] = (schema, validator, compiled)
        return validator, compiled


def _where(root: str, path: Any) -> str:
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
