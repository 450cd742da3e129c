"""Bulk jobs over HTTP: a JSON Lines upload streamed to disk under its own size limit, run by
a real ``rq worker``, followed and read back with the API key that made it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from api.auth import new_key
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.bulk_pipelines import t_gate
from tests.conftest import start_worker
from tests.support import register, wait_exit
from tests.test_bulk import RqWorkers

NDJSON = {"Content-Type": "application/x-ndjson"}


def test_upload_run_follow_and_read_back_a_bulk_job(
    api_settings: Settings,
    start_gateway: Callable[[Settings], LiveGateway],
    tmp_path: Path,
) -> None:
    key, digest = new_key()
    other, other_digest = new_key()
    settings = api_settings.replace(
        api_keys=(digest, other_digest),
        bulk_dir=str(tmp_path / "bulk"),
        bulk_max_bytes=20_000,
        max_body_bytes=1_000,  # the JSON routes' limit: a bulk upload has its own
    )
    register(settings, t_gate)
    gateway = start_gateway(settings)
    worker = start_worker(
        settings, "t_gate", BATCHLINE_PIPELINES="tests.bulk_pipelines", BATCHLINE_DEVICE="cpu"
    )
    rq = RqWorkers(settings)
    try:
        body = b"".join(orjson.dumps({"x": i}) + b"\n" for i in range(200))
        assert 1_000 < len(body) < 20_000
        with gateway.client(**{"X-API-Key": key}) as http:
            assert http.post("/v1/pipelines/t_gate/bulk", content=body).status_code == 415
            answer = http.post("/v1/pipelines/nope/bulk", content=body, headers=NDJSON)
            assert answer.status_code == 404
            answer = http.post("/v1/pipelines/t_gate/bulk", content=body * 20, headers=NDJSON)
            assert answer.status_code == 413
            assert "BATCHLINE_BULK_MAX_BYTES" in answer.json()["message"]
            answer = http.post("/v1/pipelines/t_gate/bulk", content=body, headers=NDJSON)
            assert answer.status_code == 202, answer.text
            bulk_id = answer.json()["id"]
            assert answer.headers["location"] == f"/v1/bulk/{bulk_id}"

            assert wait_exit(rq.start(), 30, "rq worker") == 0
            doc = http.get(f"/v1/bulk/{bulk_id}").json()
            assert (doc["state"], doc["done"], doc["failed"], doc["total"]) == ("done", 200, 0, 200)
            assert "output" not in doc
            results = http.get(f"/v1/bulk/{bulk_id}/results")
            assert results.headers["x-bulk-state"] == "done"
            rows = [orjson.loads(line) for line in results.content.splitlines()]
            assert rows == [{"row": i, "result": {"x": i, "y": 2 * i}} for i in range(200)]
            assert http.get(f"/v1/bulk/{bulk_id}/failures").content == b""
            # A second one, cancelled before a worker takes it: it never runs.
            later = http.post("/v1/pipelines/t_gate/bulk", content=body, headers=NDJSON).json()
            cancelled = http.delete(f"/v1/bulk/{later['id']}")
            assert cancelled.status_code == 200
            assert cancelled.json()["state"] == "cancelled"
        with gateway.client() as anonymous:
            assert anonymous.get(f"/v1/bulk/{bulk_id}").status_code == 401
            assert anonymous.post("/v1/pipelines/t_gate/bulk", content=body).status_code == 401
        with gateway.client(**{"X-API-Key": other}) as stranger:
            assert stranger.get(f"/v1/bulk/{bulk_id}").status_code == 404
            assert stranger.get(f"/v1/bulk/{bulk_id}/results").status_code == 404
            assert stranger.delete(f"/v1/bulk/{bulk_id}").status_code == 404
    finally:
        rq.close()
        worker.kill()
        worker.wait(10)
