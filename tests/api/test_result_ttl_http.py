"""``result_ttl_s`` over HTTP (issue 10.16): how long a job's record is kept once it has ended,
per submission, on both submit endpoints; checked (whole seconds, 1 to a week) and published
in the OpenAPI document."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx
import redis

from api.documents import MAX_RESULT_TTL_S
from queueing.keys import Keys
from queueing.settings import Settings


def _ttl_when_ended(r: redis.Redis, settings: Settings, job_id: str) -> int:
    key = Keys(settings.prefix).job(job_id)
    limit = time.monotonic() + 30
    while (ttl := int(r.ttl(key))) < 0:  # -1 while the job lives (no TTL)
        assert time.monotonic() < limit, "the job did not end"
        time.sleep(0.05)
    return ttl


def test_result_ttl_s_sets_how_long_an_ended_job_is_kept(
    http: httpx.Client,
    api_settings: Settings,
    redis_client: redis.Redis,
    workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    workers("echo", BATCHLINE_DEVICE="cpu")
    body = {"inputs": [1, 2], "result_ttl_s": 30}
    accepted = http.post("/v1/pipelines/echo/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
    for job in accepted.json():
        assert 0 < _ttl_when_ended(redis_client, api_settings, job["id"]) <= 30
    plain = http.post("/v1/pipelines/echo/jobs", json={"input": 3}).json()
    assert _ttl_when_ended(redis_client, api_settings, plain["id"]) > 30  # the default (1 h)

    # The synchronous call keeps a job 60 s by default; a caller may ask for longer.
    ran = http.post("/v1/pipelines/echo", json={"input": 4, "result_ttl_s": 600})
    assert ran.status_code == 200, ran.text
    assert 60 < _ttl_when_ended(redis_client, api_settings, ran.json()["id"]) <= 600


BAD = [0, -5, 2.5, "10", True, [30], MAX_RESULT_TTL_S + 1, 1e300]
PATHS = ["/v1/pipelines/echo/jobs", "/v1/pipelines/echo"]


def test_a_bad_result_ttl_s_is_a_422_saying_where(http: httpx.Client) -> None:
    for path in PATHS:
        for value in BAD:
            response = http.post(path, json={"input": 1, "result_ttl_s": value})
            assert response.status_code == 422, (path, value, response.text)
            assert response.json()["errors"][0]["where"] == "body.result_ttl_s"
            assert "result_ttl_s" in response.json()["message"]


def test_result_ttl_s_is_in_the_openapi_bodies(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in PATHS:
        body = paths[path.replace("echo", "{name}")]["post"]["requestBody"]
        field = body["content"]["application/json"]["schema"]["properties"]["result_ttl_s"]
        variants = field.get("anyOf", [field])
        integer = next(v for v in variants if v.get("type") == "integer")
        assert (integer["minimum"], integer["maximum"]) == (1, MAX_RESULT_TTL_S)
