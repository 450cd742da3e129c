"""Bad input and overload get clear answers: 422, 413, 415, 405, 404, 429, 503; never a 500
traceback, nor a message repeating a whole input or naming what is internal."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

import api.gateway
from api.submission import MAX_DEPTH
from queueing.keys import Keys
from queueing.registry import PipelineSpec, StageSpec
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from tests.api.conftest import LiveGateway

JSON = {"Content-Type": "application/json"}


def post(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    """POST raw bytes, as JSON."""
    return http.post(path, content=body, headers=JSON)


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    assert doc["error"] == code
    assert doc["message"]
    return doc


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        (b'{"input": [1, 2', "body", "not valid JSON"),
        (b"", "body", "not valid JSON"),
        (b"[1, 2]", "body", "must be a JSON object"),
        (b'{"inptu": 1}', "body.inptu", "unknown field"),
        (b'{"input": 1, "inputs": [1]}', "body", "exactly one"),
        (b"{}", "body", "exactly one"),
        (b'{"inputs": []}', "body.inputs", "non-empty"),
        (b'{"inputs": {"a": 1}}', "body.inputs", "non-empty"),
        (b'{"inputs": [' + b",".join([b"1"] * 10_001) + b"]}", "body.inputs", "at most 10000"),
        (b'{"input": 1, "timeout_s": 0}', "body.timeout_s", "timeout_s"),
        (b'{"input": 1, "timeout_s": "soon"}', "body.timeout_s", "timeout_s"),
    ],
)
def test_a_malformed_body_is_422_saying_what_and_where(
    http: httpx.Client, body: bytes, where: str, says: str
) -> None:
    doc = error(post(http, "/v1/pipelines/echo/jobs", body), 422, "invalid_input")
    assert says in doc["message"]
    assert doc["errors"][0]["where"] == where


def test_an_input_against_the_schema_is_422_saying_where(http: httpx.Client) -> None:
    doc = error(
        http.post("/v1/pipelines/greet/jobs", json={"input": {"name": 7, "age": 3}}),
        422,
        "invalid_input",
    )
    assert "greet" in doc["message"]
    found = {(e["where"], e["message"]) for e in doc["errors"]}
    assert ("input.name", "7 is not of type 'string'") in found
    assert any(where == "input" and "age" in message for where, message in found)

    many = error(
        http.post("/v1/pipelines/mlp/jobs", json={"inputs": [[0.0] * 16, [0.0] * 15 + ["x"]]}),
        422,
        "invalid_input",
    )
    assert [e["where"] for e in many["errors"]] == ["inputs[1][15]"]
    # Nothing was queued: neither the bad input nor its valid neighbour.
    assert http.get("/v1/pipelines/mlp").json()["backlog"] == 0


def test_the_synchronous_endpoint_takes_one_input(http: httpx.Client) -> None:
    doc = error(http.post("/v1/pipelines/echo", json={"inputs": [1]}), 422, "invalid_input")
    assert doc["errors"][0]["where"] == "body.inputs"


def test_a_bad_query_or_header_is_422(http: httpx.Client) -> None:
    job = http.post("/v1/pipelines/echo/jobs", json={"input": 1}).json()
    for wait in ("-1", "", "soon", "nan", "inf", "1e999"):
        doc = error(http.get(job["url"], params={"wait": wait}), 422, "invalid_input")
        assert doc["errors"] == [{"where": "query.wait", "message": "must be a number >= 0"}]
    assert http.get(job["url"], params={"wait": "0.5"}).json()["id"] == job["id"]
    error(
        http.post(
            "/v1/pipelines/echo/jobs", json={"input": 1}, headers={"Idempotency-Key": "k" * 300}
        ),
        422,
        "invalid_input",
    )
    # An empty key would be one key shared by every caller.
    doc = error(
        http.post("/v1/pipelines/echo", json={"input": 1}, headers={"Idempotency-Key": ""}),
        422,
        "invalid_input",
    )
    assert doc["errors"][0]["where"] == "header.Idempotency-Key"


def test_unknown_pipelines_and_jobs_are_404(http: httpx.Client) -> None:
    error(http.post("/v1/pipelines/nope/jobs", json={"input": 1}), 404, "unknown_pipeline")
    error(http.post("/v1/pipelines/nope", json={"input": 1}), 404, "unknown_pipeline")
    error(http.get("/v1/pipelines/nope"), 404, "unknown_pipeline")
    unknown = "0-" + "0" * 32
    error(http.get(f"/v1/jobs/{unknown}"), 404, "unknown_job")
    error(http.delete(f"/v1/jobs/{unknown}"), 404, "unknown_job")
    error(http.get("/v1/jobs/not-a-job-id"), 404, "unknown_job")
    error(http.get("/v1/nothing-here"), 404, "not_found")


def test_a_full_backlog_is_429_with_retry_after(http: httpx.Client) -> None:
    for i in range(2):  # tiny's max_backlog; no worker drains it
        assert http.post("/v1/pipelines/tiny/jobs", json={"input": i}).status_code == 202
    response = http.post("/v1/pipelines/tiny/jobs", json={"input": 2})
    doc = error(response, 429, "queue_full")
    assert int(response.headers["retry-after"]) >= 1
    assert "tiny" in doc["message"]
    error(http.post("/v1/pipelines/tiny", json={"input": 2}), 429, "queue_full")


@pytest.fixture
def small_body_gateway(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> Iterator[httpx.Client]:
    settings = api_settings.replace(max_body_bytes=1024)
    register(settings)
    with start_gateway(settings).client() as http:
        yield http


def test_a_body_over_the_limit_is_413(small_body_gateway: httpx.Client) -> None:
    http = small_body_gateway
    assert http.post("/v1/pipelines/echo/jobs", json={"input": "x" * 900}).status_code == 202
    doc = error(
        http.post("/v1/pipelines/echo/jobs", json={"input": "x" * 2000}), 413, "body_too_large"
    )
    assert doc["limit"] == 1024


def test_the_limit_counts_bytes_received_not_content_length(
    small_body_gateway: httpx.Client,
) -> None:
    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        yield b'{"input": "'
        yield b"x" * 700
        yield b"x" * 700
        yield b'"}'

    response = small_body_gateway.post("/v1/pipelines/echo/jobs", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    error(response, 413, "body_too_large")

    def small() -> Iterator[bytes]:
        yield b'{"input": '
        yield b"1}"

    response = small_body_gateway.post("/v1/pipelines/echo/jobs", content=small(), headers=JSON)
    assert response.status_code == 202


def test_unreachable_redis_is_503_with_retry_after(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    tmp_path: Path,
) -> None:
    """Redis goes away under a running gateway, then comes back with what it had (AOF)."""
    server = EmbeddedServer(
        tmp_path / "redis", os.environ.get("BATCHLINE_TEST_REDIS_SERVER")
    ).start()
    try:
        settings = api_settings.replace(redis_url=server.url)
        register(settings)
        with start_gateway(settings).client() as http:
            job = http.post("/v1/pipelines/echo/jobs", json={"input": 1}).json()
            server.stop()

            for response in (
                http.post("/v1/pipelines/echo/jobs", json={"input": 2}),
                http.post("/v1/pipelines/echo", json={"input": 2}),
                http.get(job["url"]),
                http.delete(job["url"]),
                http.get("/v1/pipelines"),
                http.get("/readyz"),
            ):
                doc = error(response, 503, "broker_unavailable")
                assert int(response.headers["retry-after"]) >= 1
                assert_nothing_internal(doc, server.url, tmp_path)
            assert http.get("/healthz").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert "batchline_broker_up 0.0" in http.get("/metrics").text

            server.start()
            assert http.get("/readyz").status_code == 200
            assert http.get(job["url"]).json()["status"] == "queued"
            assert http.post("/v1/pipelines/echo/jobs", json={"input": 3}).status_code == 202
    finally:
        server.stop()


def test_a_gateway_started_without_redis_answers_503(
    api_settings: Settings,
    start_gateway: Callable[[Settings], LiveGateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api.gateway, "SUBSCRIBE_TIMEOUT_S", 0.2)
    settings = api_settings.replace(redis_url=f"unix://{tmp_path}/nothing.sock")
    with start_gateway(settings).client() as http:
        for response in (
            http.post("/v1/pipelines/echo/jobs", json={"input": 1}),
            http.get("/v1/jobs/0-" + "0" * 32),
            http.get("/readyz"),
        ):
            doc = error(response, 503, "broker_unavailable")
            assert_nothing_internal(doc, settings.redis_url, tmp_path)
        assert http.get("/healthz").json() == {"status": "ok"}


def assert_nothing_internal(doc: dict[str, Any], redis_url: str, tmp_path: Path) -> None:
    """A 503 says Redis is unreachable, and not where it is nor how the connection failed."""
    assert doc["message"].startswith("Redis is unreachable"), doc
    text = orjson.dumps(doc).decode()
    for internal in (redis_url, str(tmp_path), ".sock", "Error ", "rrno", "onnect"):
        assert internal not in text, doc


def test_readyz_wants_registered_pipelines(
    api_settings: Settings, start_gateway: Callable[[Settings], LiveGateway]
) -> None:
    with start_gateway(api_settings).client() as http:
        response = http.get("/readyz")
        doc = error(response, 503, "not_ready")
        assert "batchline register" in doc["message"]
        assert "retry-after" in response.headers


def test_a_deployment_problem_is_a_500_whose_details_are_logged_not_sent(
    http: httpx.Client, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broken = PipelineSpec("broken", (StageSpec("broken.run"),), input_schema={"type": 12})
    redis_client.hset(Keys().registry, "broken", broken.encode())
    response = http.post("/v1/pipelines/broken/jobs", json={"input": 1})
    doc = error(response, 500, "internal")
    assert doc["message"] == "internal error; the gateway's log has the details"
    assert "invalid input schema" not in response.text
    assert "Traceback" not in response.text
    assert "invalid input schema" in caplog.text
    assert http.get("/v1/pipelines/broken").json()["backlog"] == 0  # nothing was queued


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/pipelines", "GET, HEAD"),
        ("DELETE", "/v1/pipelines/echo", "GET, HEAD, POST"),  # two routes on one path
        ("PUT", "/v1/jobs/0-" + "0" * 32, "DELETE, GET, HEAD"),
        ("GET", "/v1/pipelines/echo/jobs", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_a_wrong_method_is_405_allowing_every_method_of_the_path(
    http: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = http.request(method, path)
    doc = error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow
    assert allow in doc["message"]


def nested(depth: int) -> bytes:
    """A body whose arrays and objects nest ``depth`` deep (its own object the first)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"timeout_s": 1, "input": ' + inner + b"}"


def test_json_nested_past_the_depth_limit_is_422_saying_the_limit_and_where(
    http: httpx.Client,
) -> None:
    # 255 to 1,024 levels (orjson parses 1,024, encodes 254) were a 500; jsonschema (greet)
    # ran out of stack near 1,000.
    assert post(http, "/v1/pipelines/echo/jobs", nested(MAX_DEPTH)).status_code == 202
    for depth in (MAX_DEPTH + 1, 255, 1024):
        for path in ("/v1/pipelines/echo/jobs", "/v1/pipelines/echo", "/v1/pipelines/greet/jobs"):
            doc = error(post(http, path, nested(depth)), 422, "invalid_input")
            assert f"deeper than {MAX_DEPTH} levels" in doc["message"]
            # The first level too deep: the body, input, then input[0]...
            assert doc["errors"] == [
                {
                    "where": "input" + "[0]" * (MAX_DEPTH - 1),
                    "message": f"nested deeper than {MAX_DEPTH} levels",
                }
            ]
    deep_array = b"[" * 1024 + b"]" * 1024
    doc = error(post(http, "/v1/pipelines/echo/jobs", deep_array), 422, "invalid_input")
    assert doc["errors"][0]["where"] == "body" + "[0]" * MAX_DEPTH
    assert http.get("/v1/pipelines/echo").json()["backlog"] == 1


@pytest.mark.parametrize(
    "literal",
    [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 30, b"-" + b"9" * 300],
)
def test_an_integer_that_would_become_a_float_is_422(http: httpx.Client, literal: bytes) -> None:
    # orjson parses integers outside -2**63 .. 2**64-1 as floats, without a word.
    body = b'{"input": {"n": [1, ' + literal + b"]}}"
    for path in ("/v1/pipelines/echo/jobs", "/v1/pipelines/echo"):
        doc = error(post(http, path, body), 422, "invalid_input")
        assert "out of range" in doc["message"]
        assert doc["errors"][0]["where"] == "input.n[1]"
    assert http.get("/v1/pipelines/echo").json()["backlog"] == 0


def test_integers_within_range_round_trip(http: httpx.Client, workers: Callable) -> None:
    workers("echo")
    # The extremes, a float written with 19+ digits, digits in a string: all taken as they are.
    body = (
        b'{"input": [18446744073709551615, -9223372036854775808, 1.8446744073709551616e19, '
        b'12345678901234567890.5, "123456789012345678901234567890"]}'
    )
    response = post(http, "/v1/pipelines/echo", body)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == [
        18446744073709551615,
        -9223372036854775808,
        1.8446744073709552e19,
        1.2345678901234567e19,
        "123456789012345678901234567890",
    ]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/jsonp",
        "application/+json",
    ],
)
def test_a_body_not_sent_as_json_is_415(http: httpx.Client, content_type: str | None) -> None:
    # A web page can make a browser POST plain text or a form to any origin without asking
    # (no CORS preflight): with auth off, that would be anyone's page submitting jobs.
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = b'{"input": 1, "timeout_s": 1}'
    for path in ("/v1/pipelines/echo/jobs", "/v1/pipelines/echo"):
        response = http.post(path, content=body, headers=headers)
        doc = error(response, 415, "unsupported_media_type")
        assert "application/json" in doc["message"]
    assert http.get("/v1/pipelines/echo").json()["backlog"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.batchline+json",
    ],
)
def test_json_media_types_are_taken(http: httpx.Client, content_type: str) -> None:
    response = http.post(
        "/v1/pipelines/echo/jobs", content=b'{"input": 1}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 202, response.text


def test_a_422_cuts_the_values_it_repeats(http: httpx.Client) -> None:
    big = "x" * 400_000
    for path, body in (
        # jsonschema's messages repeat the value: "['xxx...'] is not of type 'string'"
        ("/v1/pipelines/greet/jobs", {"input": {"name": [big]}}),
        ("/v1/pipelines/greet/jobs", {"inputs": [{"name": [big]}, {"name": "a", big: 1}]}),
        ("/v1/pipelines/echo/jobs", {"input": 1, big: 1}),
        ("/v1/pipelines/echo/jobs", {"input": 1, "timeout_s": big}),
    ):
        response = http.post(path, json=body)
        doc = error(response, 422, "invalid_input")
        assert len(response.content) < 3_000, response.text[:300]
        for entry in doc["errors"]:
            assert len(entry["where"]) <= 200
            assert len(entry["message"]) <= 200
    # What is short is not cut.
    doc = error(
        http.post("/v1/pipelines/greet/jobs", json={"input": {"name": 7}}), 422, "invalid_input"
    )
    assert doc["errors"] == [{"where": "input.name", "message": "7 is not of type 'string'"}]
