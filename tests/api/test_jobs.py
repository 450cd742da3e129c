"""Submit, poll, long-poll, run synchronously, cancel, idempotency, and a gateway restart,
through real HTTP, against real workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import redis

from queueing.keys import Keys
from queueing.settings import Settings
from tests.api.conftest import LiveGateway


def poll(http: httpx.Client, url: str, wait: float = 30) -> dict[str, Any]:
    response = http.get(url, params={"wait": wait})
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def test_submit_then_long_poll_returns_the_result(http: httpx.Client, workers: Callable) -> None:
    workers("echo")
    response = http.post("/v1/pipelines/echo/jobs", json={"input": {"x": 1}})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["url"] == f"/v1/jobs/{accepted['id']}"
    assert response.headers["location"] == accepted["url"]

    doc = poll(http, accepted["url"])
    assert doc["status"] == "done"
    assert doc["result"] == {"x": 1}
    assert doc["id"] == accepted["id"]
    assert doc["pipeline"] == "echo"
    [timing] = doc["timings"]
    assert timing["stage"] == "echo.echo"
    assert timing["batch_size"] >= 1
    assert "error" not in doc


def test_submit_many_answers_a_list_in_input_order(http: httpx.Client, workers: Callable) -> None:
    workers("echo")
    response = http.post("/v1/pipelines/echo/jobs", json={"inputs": [1, "two", [3]]})
    assert response.status_code == 202
    jobs = response.json()
    assert [job["status"] for job in jobs] == ["queued"] * 3
    assert len({job["id"] for job in jobs}) == 3
    assert [poll(http, job["url"])["result"] for job in jobs] == [1, "two", [3]]


def test_poll_without_wait_answers_at_once(http: httpx.Client) -> None:
    job = http.post("/v1/pipelines/echo/jobs", json={"input": 1}).json()
    doc = http.get(job["url"]).json()
    assert doc["status"] == "queued"
    assert doc["timings"] == []
    assert "result" not in doc


def test_long_poll_is_bounded_by_max_wait(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    settings = api_settings.replace(max_wait_s=0.2)
    register(settings)
    with start_gateway(settings).client() as http:
        job = http.post("/v1/pipelines/echo/jobs", json={"input": 1}).json()
        # No worker: asked to wait an hour, it answers after max_wait_s with the status then.
        doc = poll(http, job["url"], wait=3600)
        assert doc["status"] == "queued"


def test_long_poll_wakes_up_when_the_job_finishes(http: httpx.Client, workers: Callable) -> None:
    job = http.post("/v1/pipelines/echo/jobs", json={"input": "late"}).json()
    answers: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: answers.append(poll(http, job["url"], wait=60)))
    waiter.start()
    workers("echo")  # the job can only finish after the long poll has started waiting
    waiter.join(timeout=45)  # well inside the 60 s it asked for: it was woken, not timed out
    assert not waiter.is_alive()
    [doc] = answers
    assert doc["status"] == "done"
    assert doc["result"] == "late"


def test_synchronous_call_answers_the_finished_job(http: httpx.Client, workers: Callable) -> None:
    workers("echo", "greet")
    response = http.post("/v1/pipelines/greet", json={"input": {"name": "Ada"}})
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "done"
    assert doc["result"] == "hello Ada"
    assert doc["timings"][0]["stage"] == "greet.greet"
    # The same document as a poll of that job.
    polled = http.get(doc["url"]).json()
    assert polled == doc


def test_synchronous_call_of_a_failing_job_is_200_with_the_error(
    http: httpx.Client, workers: Callable
) -> None:
    workers("flaky")
    response = http.post("/v1/pipelines/flaky", json={"input": {"fail": True}})
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "failed"
    assert "asked to fail" in doc["error"]
    assert "result" not in doc
    assert http.get(doc["url"]).json() == doc
    # Its batch-mates are not affected.
    ok = http.post("/v1/pipelines/flaky", json={"input": {"fail": False}}).json()
    assert ok["status"] == "done"


def test_synchronous_call_past_its_timeout_is_504_with_the_job(http: httpx.Client) -> None:
    response = http.post("/v1/pipelines/echo", json={"input": 1, "timeout_s": 0.2})
    assert response.status_code == 504
    doc = response.json()
    assert doc["error"] == "timeout"
    assert doc["url"] == f"/v1/jobs/{doc['id']}"
    # The job goes on: it can be polled.
    assert http.get(doc["url"]).json()["status"] == "queued"


def test_cancel_a_queued_job_which_never_reaches_the_model(
    http: httpx.Client, workers: Callable, redis_client: redis.Redis
) -> None:
    job = http.post("/v1/pipelines/echo/jobs", json={"input": "never"}).json()
    response = http.delete(job["url"])
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["id"] == job["id"]

    workers("echo")
    later = http.post("/v1/pipelines/echo/jobs", json={"input": "after"}).json()
    assert poll(http, later["url"])["status"] == "done"  # the worker went past the cancelled one
    doc = http.get(job["url"]).json()
    assert doc["status"] == "cancelled"
    assert doc["timings"] == []
    assert doc["started_at"] is None
    assert "cancelled" in doc["error"]
    # A second cancel changes nothing; cancelling a finished job keeps its outcome.
    assert http.delete(job["url"]).json()["status"] == "cancelled"
    assert http.delete(later["url"]).json()["status"] == "done"


def test_idempotency_key_returns_the_same_job(http: httpx.Client, workers: Callable) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = http.post("/v1/pipelines/echo/jobs", json={"input": 17}, headers=headers)
    again = http.post("/v1/pipelines/echo/jobs", json={"input": 17}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = http.post(
        "/v1/pipelines/echo/jobs", json={"input": 17}, headers={"Idempotency-Key": "order-18"}
    )
    assert other.json()["id"] != first.json()["id"]

    workers("echo")
    assert poll(http, first.json()["url"])["result"] == 17
    # A replay after the job finished says so.
    replay = http.post("/v1/pipelines/echo/jobs", json={"input": 17}, headers=headers)
    assert replay.json() == {**first.json(), "status": "done"}
    # The synchronous endpoint honours the key too.
    sync = http.post("/v1/pipelines/echo", json={"input": 17}, headers=headers)
    assert sync.status_code == 200
    assert sync.json()["id"] == first.json()["id"]


def test_idempotency_key_with_a_different_body_is_409(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": "k1"}
    first = http.post("/v1/pipelines/echo/jobs", json={"input": 1}, headers=headers).json()
    response = http.post("/v1/pipelines/echo/jobs", json={"input": 2}, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_conflict"
    assert response.json()["id"] == first["id"]


def test_idempotency_key_on_many_inputs(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    first = http.post("/v1/pipelines/echo/jobs", json={"inputs": [1, 2]}, headers=headers)
    again = http.post("/v1/pipelines/echo/jobs", json={"inputs": [1, 2]}, headers=headers)
    assert [j["id"] for j in first.json()] == [j["id"] for j in again.json()]
    assert len({j["id"] for j in first.json()}) == 2


def test_a_gateway_restart_loses_no_accepted_job(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    workers: Callable,
) -> None:
    register(api_settings)
    first = start_gateway(api_settings)
    with first.client() as http:
        single = [http.post("/v1/pipelines/echo/jobs", json={"input": i}).json() for i in range(5)]
        many = http.post("/v1/pipelines/echo/jobs", json={"inputs": list(range(5, 20))}).json()
    first.stop()

    workers("echo")
    with start_gateway(api_settings).client() as http:
        results = [poll(http, job["url"]) for job in [*single, *many]]
    assert [doc["status"] for doc in results] == ["done"] * 20
    assert [doc["result"] for doc in results] == list(range(20))


def test_mlp_runs_through_the_gateway(http: httpx.Client, workers: Callable) -> None:
    workers("mlp")
    example = http.get("/v1/pipelines/mlp").json()["example"]
    response = http.post("/v1/pipelines/mlp", json={"input": example})
    assert response.status_code == 200
    result = response.json()["result"]
    assert 0 <= result["label"] < 4
    assert abs(sum(result["probs"]) - 1) < 1e-4


def test_a_synchronous_job_is_kept_only_briefly_once_answered(
    http: httpx.Client, workers: Callable, api_settings: Settings
) -> None:
    """Issue 10.16: a sync call's result is in its answer; its record is kept for
    sync_result_ttl_s (a retry's window), not result_ttl_s. A submitted job keeps the long TTL
    (its caller has yet to poll it)."""
    workers("echo")
    r = redis.Redis.from_url(api_settings.redis_url)
    keys = Keys(api_settings.prefix)
    ran = http.post("/v1/pipelines/echo", json={"input": 1}).json()
    assert ran["status"] == "done"
    assert 0 < r.ttl(keys.job(ran["id"])) <= api_settings.sync_result_ttl_s
    submitted = http.post("/v1/pipelines/echo/jobs", json={"input": 2}).json()
    assert poll(http, submitted["url"])["status"] == "done"
    assert r.ttl(keys.job(submitted["id"])) > api_settings.sync_result_ttl_s
    r.close()
