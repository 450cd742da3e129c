"""The compiled input schemas (api.schemas) say what jsonschema says: for any schema of the
subset and any JSON value, valid exactly when jsonschema finds no error; any other schema is
left to jsonschema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.schemas import compile_schema

TYPES = ["array", "boolean", "integer", "null", "number", "object", "string"]
NUMBERS = st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False) | st.sampled_from([1.0, 2.5])
TEXT = st.text(alphabet="ab0", max_size=3)
KEYS = st.sampled_from(["a", "b", "c"])


def _keywords(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A schema of up to three keywords (more would rarely let a value through, leaving most
    keywords' edges untested)."""
    keywords: dict[str, st.SearchStrategy[Any]] = {
        "type": st.sampled_from(TYPES)
        | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
        "enum": st.lists(TEXT, min_size=1, max_size=3, unique=True),
        "const": TEXT,
        "minimum": NUMBERS,
        "maximum": NUMBERS,
        "exclusiveMinimum": NUMBERS,
        "exclusiveMaximum": NUMBERS,
        "minLength": st.integers(0, 3),
        "maxLength": st.integers(0, 3),
        "minItems": st.integers(0, 3),
        "maxItems": st.integers(0, 3),
        "pattern": st.sampled_from(["^a", "b$", "[0-9]", "^$", "a+b"]),
        "items": children,
        "properties": st.dictionaries(KEYS, children, max_size=3),
        "required": st.lists(KEYS, max_size=3, unique=True),
        "additionalProperties": children,
        "title": TEXT,
        "format": st.sampled_from(["email", "date-time"]),
    }
    chosen = st.lists(st.sampled_from(sorted(keywords)), max_size=3, unique=True)
    return chosen.flatmap(lambda names: st.fixed_dictionaries({n: keywords[n] for n in names}))


SCHEMAS = st.recursive(st.booleans() | _keywords(st.booleans()), _keywords, max_leaves=6)
VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.integers(-(2**70), 2**70) | TEXT,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=1500, deadline=None)
@given(schema=SCHEMAS, values=st.lists(VALUES, min_size=1, max_size=8))
@example(schema={"exclusiveMinimum": 1, "maximum": 1.0}, values=[1, 1.0, True, 0.5])
@example(schema={"type": ["integer", "null"]}, values=[1.0, 1.5, True, None, 2**70])
@example(schema={"pattern": "^a", "maxLength": 2}, values=["", "ab", "ba", "abc", 1])
@example(schema={"enum": ["a", "1"]}, values=["a", 1, "1", True, None])
@example(
    schema={
        "properties": {"a": False},
        "required": ["b"],
        "additionalProperties": {"type": "null"},
    },
    values=[{"b": None}, {"a": 1, "b": None}, {"b": 1}, {"c": None}, [], "a"],
)
@example(schema={"items": {"minItems": 1}, "minItems": 2}, values=[[[1], [2]], [[1], []], [1, 2]])
def test_the_compiled_check_agrees_with_jsonschema(schema: Any, values: list[Any]) -> None:
    check = compile_schema(schema)
    assert check is not None, schema
    reference = jsonschema.validators.validator_for(schema)(schema)
    for value in values:
        assert check(value) == reference.is_valid(value), (schema, value)


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "number"}}},
        {"allOf": [{"type": "number"}]},
        {"enum": [1, "a"]},  # (jsonschema's equality tells 1 from True: only strings compile)
        {"const": 1},
        {"items": [{"type": "number"}]},
        {"patternProperties": {"^a": {"type": "number"}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"},
        {"type": "array", "items": {"type": "number", "multipleOf": 0.1}},
        {"x-vendor": 1},
    ],
)
def test_a_schema_outside_the_subset_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_schema(schema) is None


def test_a_draft_that_agrees_on_the_subset_compiles() -> None:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer"}
    check = compile_schema(schema)
    assert check is not None
    assert [check(value) for value in (1, 1.0, True, 1.5)] == [True, True, False, False]
