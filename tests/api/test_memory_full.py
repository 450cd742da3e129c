"""Redis at its ``maxmemory`` with ``noeviction`` (issue 10.16): a submit gets a clear
BrokerFull (Python) or 503 ``broker_full`` with Retry-After (HTTP), not a 500 or a raw redis
error; what was accepted before is not lost; and service resumes by itself once memory frees
(here: a ballast key expires, as finished jobs' records do), with the worker still running."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from queueing.client import Client, Job
from queueing.errors import BrokerFull
from queueing.jobs import JobStatus
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.support import wait_finished

BALLAST_S = 4.0
"""The ballast that fills the server expires after this long."""


def _fill(r: redis.Redis) -> None:
    """Take 2 MB with a ballast key that expires after BALLAST_S, then set maxmemory below
    what is used: every write is refused until the ballast expires."""
    for _ in range(32):  # (in small pieces: a 2 MB command would hold a 2 MB query buffer)
        r.append("ballast", b"b" * 64 * 1024)
    r.pexpire("ballast", int(BALLAST_S * 1000))
    r.config_set("maxmemory-policy", "noeviction")
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(used - 256 * 1024))


def _until(call: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    limit = time.monotonic() + timeout
    while True:
        try:
            return call()
        except BrokerFull:
            if time.monotonic() > limit:
                raise AssertionError(f"{what}: still refused after {timeout:g}s") from None
            time.sleep(0.2)


def test_a_full_redis_refuses_submits_clearly_keeps_what_it_took_and_recovers(
    own_server: EmbeddedServer,
    settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    settings = settings.replace(
        redis_url=own_server.url, pipelines=("pipelines.examples", "tests.api.pipelines")
    )
    register(settings)
    gateway = start_gateway(settings)
    r = redis.Redis.from_url(own_server.url)
    with Client(settings) as client, gateway.client() as http:
        accepted = client.submit_many("echo", [{"i": i} for i in range(20)])
        _fill(r)
        with pytest.raises(BrokerFull, match="out of memory"):
            client.submit("echo", {"i": -1})
        response = http.post("/v1/pipelines/echo/jobs", json={"input": {"i": -2}})
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "broker_full"
        assert int(response.headers["Retry-After"]) >= 1

        # A worker started now meets the full server too (START is a write): it waits.
        worker = workers("echo", BATCHLINE_DEVICE="cpu", REDIS_URL=own_server.url)
        # The ballast expires: submits go through again, over HTTP and in Python.
        later = _until(lambda: client.submit("echo", {"i": -2000}), "Python submit")
        limit = time.monotonic() + 30
        while (
            response := http.post("/v1/pipelines/echo/jobs", json={"input": {"i": -3000}})
        ).status_code == 503:
            assert time.monotonic() < limit, "the gateway still answers 503"
            time.sleep(0.2)
        assert response.status_code == 202, response.text
        http_job = Job(client, response.json()["id"])

        records = wait_finished([*accepted, later, http_job], 60)
        assert [r.status for r in records] == [JobStatus.DONE] * len(records)
        assert worker.poll() is None, "the worker died while Redis was full"
    r.close()
