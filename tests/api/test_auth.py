"""API keys: 401 without one; a job is visible to the key that created it only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from api.auth import ApiKeys, digest, new_key
from queueing.errors import ConfigError
from queueing.settings import Settings
from tests.api.conftest import LiveGateway

ALICE, BOB = "alice-key", "bob-key"


@pytest.fixture
def secured(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> LiveGateway:
    settings = api_settings.replace(api_keys=(digest(ALICE), digest(BOB)))
    register(settings)
    return start_gateway(settings)


def test_no_key_or_an_unknown_key_is_401(secured: LiveGateway) -> None:
    with secured.client() as http:
        for response in (
            http.post("/v1/pipelines/echo/jobs", json={"input": 1}),
            http.post("/v1/pipelines/echo", json={"input": 1}),
            http.get("/v1/pipelines"),
            http.get("/v1/pipelines/echo"),
            http.get("/v1/jobs/0-" + "0" * 32),
            http.delete("/v1/jobs/0-" + "0" * 32),
            http.get("/v1/pipelines", headers={"Authorization": "Bearer wrong"}),
            http.get("/v1/pipelines", headers={"X-API-Key": "wrong"}),
            http.get("/v1/pipelines", headers={"Authorization": f"Basic {ALICE}"}),
        ):
            assert response.status_code == 401, response.request.url
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        # Probes carry no key: /healthz and /readyz's status answer, without pipeline names;
        # /metrics needs a key (issue 10.15).
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json() == {"status": "ready"}
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        alice = {"Authorization": f"Bearer {ALICE}"}
        assert http.get("/metrics", headers=alice).status_code == 200
        assert "echo" in http.get("/readyz", headers=alice).json()["pipelines"]


def test_operations_can_be_opened_with_public_ops(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    settings = api_settings.replace(api_keys=(digest(ALICE),), public_ops=True)
    register(settings)
    with start_gateway(settings).client() as http:
        assert http.get("/metrics").status_code == 200
        assert "echo" in http.get("/readyz").json()["pipelines"]
        assert http.get("/v1/pipelines").status_code == 401  # the API itself stays closed


def test_a_job_belongs_to_the_key_that_created_it(
    secured: LiveGateway, workers: Callable, redis_client: redis.Redis
) -> None:
    workers("echo")
    alice = secured.client(Authorization=f"Bearer {ALICE}")
    bob = secured.client(**{"X-API-Key": BOB})
    with alice, bob:
        job = alice.post("/v1/pipelines/echo/jobs", json={"input": "secret"}).json()
        assert alice.get(job["url"], params={"wait": 30}).json()["result"] == "secret"
        owner = redis_client.hget(f"bl:{{0}}:job:{job['id']}", "owner")
        assert owner == digest(ALICE).encode()

        # Bob cannot tell the job exists: the same 404 as a job that never was.
        unknown = bob.get("/v1/jobs/0-" + "0" * 32).json()
        for response in (bob.get(job["url"]), bob.get(job["url"], params={"wait": 5})):
            assert response.status_code == 404
            assert response.json()["error"] == unknown["error"]
        assert bob.delete(job["url"]).status_code == 404
        assert alice.get(job["url"]).json()["status"] == "done"

        # Bob's own jobs work with either header.
        mine = bob.post("/v1/pipelines/echo", json={"input": "bob's"}).json()
        assert mine["result"] == "bob's"
        assert alice.get(mine["url"]).status_code == 404


def test_idempotency_keys_are_per_api_key(secured: LiveGateway) -> None:
    alice = secured.client(Authorization=f"Bearer {ALICE}")
    bob = secured.client(Authorization=f"Bearer {BOB}")
    with alice, bob:
        headers = {"Idempotency-Key": "same"}
        a = alice.post("/v1/pipelines/echo/jobs", json={"input": 1}, headers=headers)
        b = bob.post("/v1/pipelines/echo/jobs", json={"input": 2}, headers=headers)
        assert a.status_code == b.status_code == 202  # no 409 across keys
        assert a.json()["id"] != b.json()["id"]
        assert bob.get(a.json()["url"]).status_code == 404


def test_configured_keys_must_be_digests() -> None:
    with pytest.raises(ConfigError, match="BATCHLINE_API_KEYS"):
        ApiKeys(["not-a-digest"])
    assert ApiKeys([digest("k").upper()]).owner("k") == digest("k")


def test_keygen_makes_a_key_and_its_digest() -> None:
    key, key_digest = new_key()
    assert ApiKeys([key_digest]).owner(key) == key_digest
    assert key_digest == digest(key)
