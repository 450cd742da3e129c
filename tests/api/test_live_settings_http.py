"""Live batch settings over HTTP (``/v1/admin/config/{pipeline}/{stage}``, API key required
when keys are on) and the batch settings a pipeline's page shows: the cost function, the
adaptive wait, and the values in force with ``settings_since``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from api.auth import new_key
from queueing.settings import Settings
from tests.api.conftest import LiveGateway

KEY, DIGEST = new_key()
CONFIG = "/v1/admin/config/t_live/model"


@pytest.fixture
def secured(
    settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> LiveGateway:
    secured = settings.replace(pipelines=("tests.workers.batching_pipelines",), api_keys=(DIGEST,))
    register(secured)
    return start_gateway(secured)


def test_stage_settings_change_over_http(secured: LiveGateway) -> None:
    with secured.client() as anonymous, secured.client(**{"X-API-Key": KEY}) as http:
        for method in ("GET", "PUT", "DELETE"):
            answer = anonymous.request(method, CONFIG, json={"max_batch_size": 4})
            assert answer.status_code == 401, (method, answer.text)

        before = http.get(CONFIG).json()
        assert before["max_batch_size"] == 2
        assert before["settings_since"] is None

        changed = http.put(CONFIG, json={"max_batch_size": 64, "batch_wait_timeout_s": "auto"})
        assert changed.status_code == 200, changed.text
        doc = changed.json()
        assert doc["max_batch_size"] == 64
        assert doc["batch_wait_timeout_s"] == "auto"
        assert doc["settings_since"] is not None
        # Merged with what was set before.
        budget = http.put(CONFIG, json={"max_latency_ms": 25}).json()
        assert (budget["max_batch_size"], budget["max_latency_ms"]) == (64, 25)

        [stage] = http.get("/v1/pipelines/t_live").json()["stages"]
        assert stage["max_batch_size"] == 64
        assert stage["batch_wait_timeout_s"] == "auto"
        assert stage["max_latency_ms"] == 25
        assert stage["settings_since"] == budget["settings_since"]

        for body, where in [
            ({"max_batch_size": 0}, "max_batch_size"),
            ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
            ({"batch_wait_timeout_s": "soon"}, "batch_wait_timeout_s"),
            ({"max_latency_ms": 0}, "max_latency_ms"),
            ({"colour": "red"}, "colour"),
            ({}, "no setting"),
            ({"max_batch_size": None}, "max_batch_size"),
        ]:
            refused = http.put(CONFIG, json=body)
            assert refused.status_code == 422, (body, refused.text)
            assert where in refused.text, (body, refused.text)
        assert (
            http.put("/v1/admin/config/t_live/nope", json={"max_batch_size": 4}).status_code == 404
        )
        assert (
            http.put("/v1/admin/config/nope/model", json={"max_batch_size": 4}).status_code == 404
        )

        reset = http.delete(CONFIG).json()
        assert (reset["max_batch_size"], reset["settings_since"]) == (2, None)
        [stage] = http.get("/v1/pipelines/t_live").json()["stages"]
        assert stage["max_batch_size"] == 2
        assert stage["batch_wait_timeout_s"] == 0.0

        [cost] = http.get("/v1/pipelines/t_cost").json()["stages"]
        assert (cost["batch_size_fn"], cost["max_batch_size"], cost["max_batch_items"]) == (
            "total_n",
            10,
            8,
        )

        paths = http.get("/openapi.json").json()["paths"]
        assert {"get", "put", "delete"} <= set(paths["/v1/admin/config/{pipeline}/{stage}"])
