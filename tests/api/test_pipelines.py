"""Pipelines pages, health, readiness, metrics and the OpenAPI docs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from pipelines.loading import load_pipelines
from tests.api.conftest import LiveGateway
from tests.api.test_errors import JSON
from tests.conftest import ROOT


def live_workers(http: httpx.Client, pipeline: str, count: int) -> dict[str, dict]:
    """Wait until ``count`` workers serve ``pipeline`` (they register as they start)."""
    while True:
        doc = http.get(f"/v1/pipelines/{pipeline}").json()
        if len(doc["workers"]) >= count:
            workers: dict[str, dict] = doc["live_workers"]
            return workers
        http.get("/v1/jobs/0-" + "0" * 32, params={"wait": 0.1})  # a pause that is not a sleep


def test_list_pipelines(http: httpx.Client) -> None:
    response = http.get("/v1/pipelines")
    assert response.status_code == 200
    docs = {doc["name"]: doc for doc in response.json()["pipelines"]}
    assert {"echo", "mlp", "greet", "tiny"} <= set(docs)
    echo = docs["echo"]
    [stage] = echo["stages"]
    [declared] = load_pipelines(["pipelines.examples"])["echo"].compile().spec.stages
    assert stage["name"] == "echo.echo"
    assert stage["max_batch_size"] == declared.max_batch_size
    assert stage["batch_wait_timeout_s"] == declared.batch_wait_timeout_s
    assert echo["example"] == {"hello": "world"}
    assert docs["mlp"]["input_schema"]["minItems"] == 16
    assert docs["tiny"]["max_backlog"] == 2


def test_one_pipeline_with_backlog_and_live_workers(http: httpx.Client, workers: Callable) -> None:
    http.post("/v1/pipelines/greet/jobs", json={"inputs": [{"name": "a"}, {"name": "b"}]})
    doc = http.get("/v1/pipelines/greet").json()
    assert doc["backlog"] == 2
    assert doc["stages"][0]["backlog"] == 2
    assert doc["workers"] == []
    assert doc["example"] == {"name": "Ada"}
    assert doc["input_schema"]["required"] == ["name"]

    process = workers("greet")
    [(_, info)] = live_workers(http, "greet", 1).items()
    assert info["pid"] == process.pid
    assert info["stages"] == ["greet.greet"]
    assert doc["stages"][0]["name"] in info["stages"]


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert {"echo", "mlp"} <= set(ready.json()["pipelines"])


def test_head_is_answered_wherever_get_is(http: httpx.Client) -> None:
    job = http.post("/v1/pipelines/echo/jobs", json={"input": 1}).json()
    for path in ("/healthz", "/readyz", "/v1/pipelines", "/v1/pipelines/echo", job["url"]):
        get, head = http.get(path), http.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"]
    assert http.head("/v1/pipelines/nope").status_code == 404
    not_allowed = http.head("/v1/pipelines/echo/jobs")
    assert (not_allowed.status_code, not_allowed.headers["allow"]) == (405, "POST")


def test_metrics(http: httpx.Client, workers: Callable) -> None:
    workers("echo")
    assert http.post("/v1/pipelines/echo", json={"input": 1}).status_code == 200
    http.post("/v1/pipelines/nope", json={"input": 1})
    queued = http.post("/v1/pipelines/greet/jobs", json={"input": {"name": "queued"}}).json()
    assert http.get(queued["url"]).status_code == 200
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    names = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert all(name.startswith("batchline_") for name in names)
    for expected in (
        'batchline_http_requests_total{method="POST",route="/v1/pipelines/{name}",status="200"} 1.0',
        'batchline_http_requests_total{method="POST",route="/v1/pipelines/{name}",status="404"} 1.0',
        'batchline_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0',
        'batchline_stage_backlog{stage="greet.greet"} 1.0',
        'batchline_stage_workers{stage="echo.echo"} 1.0',
        'batchline_jobs_submitted_total{pipeline="echo"} 1.0',
        'batchline_batch_size_count{stage="echo.echo"} 1.0',
        'batchline_job_duration_seconds_count{pipeline="echo",status="done"} 1.0',
        'batchline_stage_events_total{event="done",stage="echo.echo"} 1.0',
        'batchline_stage_failures_total{stage="echo.echo"} 0.0',
        'batchline_stage_redeliveries_total{stage="echo.echo"} 0.0',
        'batchline_stage_dead_letters_total{stage="echo.echo"} 0.0',
        "batchline_broker_up 1.0",
    ):
        assert expected in text, expected
    assert "batchline_http_request_duration_seconds_bucket" in text


def test_openapi_docs(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/v1/pipelines/{name}/jobs"]) == {"post"}
    assert set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"}
    poll = paths["/v1/jobs/{job_id}"]["get"]
    wait = [p for p in poll["parameters"] if p["name"] == "wait"]
    assert wait == [{**wait[0], "in": "query", "required": False}]
    assert wait[0]["schema"] == {"type": "number", "minimum": 0, "default": 0}
    submit = paths["/v1/pipelines/{name}/jobs"]["post"]
    assert "input" in submit["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"202", "413", "422", "429", "503"} <= set(submit["responses"])


BODIES: list[Any] = [
    {},
    {"input": 1},
    {"input": None},
    {"input": {"any": ["thing"]}},
    {"inputs": [1, 2]},
    {"inputs": []},
    {"inputs": None},
    {"inputs": 1},
    {"inputs": [1] * 10_000},
    {"inputs": [1] * 10_001},
    {"input": 1, "inputs": [1]},
    {"input": 1, "inputs": None},
    {"input": 1, "extra": 1},
    {"input": 1, "timeout_s": 0.5},
    {"input": 1, "timeout_s": 3},
    {"input": 1, "timeout_s": None},
    {"input": 1, "timeout_s": 0},
    {"input": 1, "timeout_s": -1},
    {"input": 1, "timeout_s": "1"},
    {"input": 1, "timeout_s": True},
    {"timeout_s": 1},
    [1],
    1,
    None,
]


@pytest.mark.parametrize("path", ["/v1/pipelines/{name}/jobs", "/v1/pipelines/{name}"])
def test_the_published_body_schemas_take_exactly_what_the_gateway_takes(
    http: httpx.Client, path: str
) -> None:
    body = http.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]
    assert "415" in http.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    validator = jsonschema.Draft202012Validator(body["content"]["application/json"]["schema"])
    url = path.format(name="nope")  # a body the gateway takes is then a 404, never queued
    for doc in BODIES:
        status = http.post(url, content=orjson.dumps(doc), headers=JSON).status_code
        assert status in (404, 422)
        assert validator.is_valid(doc) == (status == 404), str(doc)[:80]


def test_docs_need_no_key(
    api_settings, register: Callable, start_gateway: Callable[..., LiveGateway]
) -> None:
    from api.auth import digest

    settings = api_settings.replace(api_keys=(digest("k"),))
    register(settings)
    with start_gateway(settings).client() as http:
        assert http.get("/docs").status_code == 200
        assert http.get("/openapi.json").status_code == 200


def test_the_gateway_imports_no_model_code() -> None:
    code = (
        "import sys, api.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('workers', 'pipelines', 'torch')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
