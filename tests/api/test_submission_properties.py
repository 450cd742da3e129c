"""Property tests of the submission parser (issue 10): whatever the body, parse_submission
either returns a well-formed Submission or raises InvalidInput (a 422); it never raises
anything else (a 500), and what it accepts is what the gateway queues."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import ApiError
from api.submission import Submission, parse_submission

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=40,
)
BODIES = (
    st.dictionaries(st.sampled_from(["input", "inputs", "timeout_s", "other"]), JSON, max_size=4)
    | JSON
)


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer orjson cannot encode: send it as text, as a client would
        return json.dumps(value).encode()


def _parse(body: bytes, allow_many: bool) -> Submission | ApiError:
    try:
        return parse_submission(body, allow_many=allow_many)
    except ApiError as exc:
        return exc


@settings(max_examples=400, deadline=None)
@given(body=BODIES, many=st.booleans())
def test_any_json_body_is_parsed_or_refused_with_a_422(body: Any, many: bool) -> None:
    submission = _parse(_encode(body), many)
    if isinstance(submission, ApiError):
        assert submission.status == 422
        return
    assert isinstance(body, dict)
    assert set(body) <= {"input", "inputs", "timeout_s"}
    assert ("input" in body) != ("inputs" in body)
    assert submission.many == ("inputs" in body)
    assert submission.inputs == ([body["input"]] if "input" in body else body["inputs"])
    assert 1 <= len(submission.inputs) <= 10_000
    assert submission.timeout_s is None or submission.timeout_s > 0


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_a_422(raw: bytes) -> None:
    parsed = _parse(raw, True)
    assert not isinstance(parsed, ApiError) or parsed.status == 422
