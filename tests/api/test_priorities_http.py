"""The ``priority`` field of a submission over HTTP: accepted (the job runs in its lane),
refused with 422 when unknown, the 429 of a full lane naming it, and the pipeline page's
backlog per lane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from queueing.keys import Keys


def test_a_job_submitted_high_runs_in_the_high_lane(
    http: httpx.Client, workers: Callable, redis_client: redis.Redis
) -> None:
    response = http.post("/v1/pipelines/echo/jobs", json={"input": {"x": 1}, "priority": "high"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert redis_client.hget(Keys().job(job["id"]), "lane") == b"high"
    assert redis_client.xlen(Keys().stream(0, "echo.echo", "high")) == 1
    many = http.post("/v1/pipelines/echo/jobs", json={"inputs": [2, 3], "priority": "low"})
    assert many.status_code == 202, many.text
    page = http.get("/v1/pipelines/echo").json()
    assert page["lanes"] == {"high": 1, "normal": 0, "low": 2}
    assert page["stages"][0]["lanes"] == {"high": 1, "normal": 0, "low": 2}
    assert page["stages"][0]["lane_weights"] == [8, 4, 1]

    workers("echo")
    done = http.get(job["url"], params={"wait": 30}).json()
    assert (done["status"], done["result"], done["priority"]) == ("done", {"x": 1}, "high")
    # (a synchronous run answers from the end's notice, which carries the lane too)
    run = http.post("/v1/pipelines/echo", json={"input": 4, "priority": "low"})
    assert run.status_code == 200, run.text
    assert (run.json()["result"], run.json()["priority"]) == (4, "low")
    assert http.post("/v1/pipelines/echo", json={"input": 5}).json()["priority"] == "normal"


@pytest.mark.parametrize("bad", ["urgent", "", "HIGH", 1, True, ["high"], {"lane": "high"}])
def test_an_unknown_priority_is_422(http: httpx.Client, bad: Any) -> None:
    for path in ("/v1/pipelines/echo/jobs", "/v1/pipelines/echo"):
        response = http.post(path, json={"input": 1, "priority": bad})
        assert response.status_code == 422, response.text
        doc = response.json()
        assert doc["error"] == "invalid_input"
        assert '"high", "normal", "low"' in doc["message"]
        assert doc["errors"][0]["where"] == "body.priority"


def test_a_full_lane_is_429_naming_it_while_others_take_jobs(http: httpx.Client) -> None:
    for i in range(2):  # tiny's max_backlog; no worker drains it
        body = {"input": i, "priority": "low"}
        assert http.post("/v1/pipelines/tiny/jobs", json=body).status_code == 202
    response = http.post("/v1/pipelines/tiny/jobs", json={"input": 2, "priority": "low"})
    assert response.status_code == 429
    doc = response.json()
    assert (doc["error"], doc["lane"]) == ("queue_full", "low")
    assert "lane 'low'" in doc["message"]
    assert int(response.headers["retry-after"]) >= 1
    body = {"input": 3, "priority": "high"}
    assert http.post("/v1/pipelines/tiny/jobs", json=body).status_code == 202


def test_openapi_describes_the_priority_field(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v1/pipelines/{name}/jobs", "/v1/pipelines/{name}"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        priority = body["properties"]["priority"]
        assert {"enum": ["high", "normal", "low"], "type": "string"} in priority["anyOf"]
