"""The admin routes with API keys on: a poison job submitted over HTTP is dead-lettered, listed,
requeued once fixed and done; every /v1/admin route is a 401 without a key; the dashboard's
static files are served to anyone."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from api.auth import new_key
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.poison import POISONED, dead_letter_poison
from tests.support import Workers

KEY, DIGEST = new_key()
DEAD = "/v1/admin/dead/t_poison/model"


@pytest.fixture
def secured_settings(settings: Settings) -> Settings:
    return settings.replace(pipelines=("tests.poison",), max_deliveries=1, api_keys=(DIGEST,))


@pytest.fixture
def poison_workers(secured_settings: Settings) -> Iterator[Workers]:
    pool = Workers(secured_settings)
    try:
        yield pool
    finally:
        pool.close()


def test_dead_letters_over_http_with_keys_on(
    secured_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    poison_workers: Workers,
    redis_client: redis.Redis,
) -> None:
    register(secured_settings)
    gateway = start_gateway(secured_settings)
    redis_client.set(POISONED, 1)
    with gateway.client() as anonymous, gateway.client(**{"X-API-Key": KEY}) as http:
        submitted = http.post("/v1/pipelines/t_poison/jobs", json={"input": {"x": 7, "poison": 1}})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        dead_letter_poison(poison_workers, secured_settings, 1)
        poison_workers.start("t_poison", name="w")
        failed = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert failed["status"] == "failed"
        assert "dead-lettered" in failed["error"]

        for method, path in (
            ("GET", "/v1/admin/overview"),
            ("GET", DEAD),
            ("GET", f"{DEAD}/jobs/{job_id}"),
            ("POST", f"{DEAD}/jobs/{job_id}/requeue"),
            ("POST", f"{DEAD}/requeue"),
            ("DELETE", DEAD),
        ):
            refused = anonymous.request(method, path)
            assert refused.status_code == 401, (method, path)
            wrong = anonymous.request(method, path, headers={"X-API-Key": "wrong"})
            assert wrong.status_code == 401, (method, path)
        assert redis_client.xlen("bl:{0}:dead:t_poison.model") == 1, "a 401 changed nothing"

        listed = http.get(DEAD).json()
        assert listed["count"] == 1
        (letter,) = listed["dead_letters"]
        assert letter["job"] == job_id
        assert "dead-lettered after 1 attempts" in letter["reason"]
        assert http.get(f"{DEAD}/jobs/{job_id}").json()["data"] == '{"x":7,"poison":1}'
        stage = _stage(http.get("/v1/admin/overview").json(), "t_poison.model")
        assert stage["dead"]["count"] == 1
        assert stage["dead"]["latest"][0]["job"] == job_id

        redis_client.delete(POISONED)  # the fix
        requeued = http.post(f"{DEAD}/jobs/{job_id}/requeue")
        assert requeued.status_code == 200, requeued.text
        assert requeued.json()["outcome"] == "requeued"
        # The gateway's listener was told of the failure; its long poll now waits for the end.
        done = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert done["status"] == "done"
        assert done["result"] == {"x": 7, "y": 14, "formatted": True}

        again = http.post(f"{DEAD}/jobs/{job_id}/requeue")
        assert again.status_code == 404
        assert again.json()["error"] == "unknown_dead_letter"
        assert http.post(f"{DEAD}/requeue").json() == {"requeued": 0, "results": []}
        assert http.delete(DEAD).json() == {"stage": "t_poison.model", "purged": 0}
        bad = http.get("/v1/admin/dead/t_poison/no.dots")
        assert bad.status_code == 422


def test_the_dashboard_page_is_served_without_a_key(
    secured_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    register(secured_settings)
    with start_gateway(secured_settings).client() as anonymous:
        page = anonymous.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'src="dashboard/app.js"' in page.text
        script = anonymous.get("/dashboard/app.js")
        assert script.status_code == 200
        assert "v1/admin/overview" in script.text
        assert anonymous.get("/dashboard/style.css").status_code == 200
        assert anonymous.get("/dashboard/secrets.txt").status_code == 404
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert {"/v1/admin/overview", DEAD.replace("t_poison/model", "{pipeline}/{stage}")} <= set(
            paths
        )


def _stage(overview: dict[str, object], name: str) -> dict[str, object]:
    for pipeline in overview["pipelines"]:  # type: ignore[attr-defined]
        for stage in pipeline["stages"]:
            if stage["name"] == name:
                return stage  # type: ignore[no-any-return]
    raise AssertionError(f"no stage {name} in the overview")


def test_with_admin_keys_only_they_may_use_the_admin_routes(
    secured_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    """BATCHLINE_ADMIN_KEYS: another valid key gets a 403 on every admin route (dead letters
    hold every caller's inputs), and may still use the rest of /v1."""
    admin_key, admin_digest = new_key()
    settings = secured_settings.replace(api_keys=(DIGEST, admin_digest), admin_keys=(admin_digest,))
    register(settings)
    gateway = start_gateway(settings)
    with gateway.client(**{"X-API-Key": KEY}) as tenant:
        assert tenant.get("/v1/admin/overview").status_code == 403
        assert tenant.get(DEAD).status_code == 403
        assert tenant.delete(DEAD).status_code == 403
        assert tenant.get("/v1/pipelines").status_code == 200
    with gateway.client(**{"X-API-Key": admin_key}) as admin:
        assert admin.get("/v1/admin/overview").status_code == 200
        assert admin.get(DEAD).status_code == 200
