"""batchline on a real 3-master Redis Cluster: found by itself, partitions on every master,
every example pipeline end to end (Python client and gateway), keyless and idempotent batch
submits, and waits that survive a lost subscription."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from pipelines.loading import load_pipelines
from queueing.bulk import rq_connection
from queueing.client import Client
from queueing.cluster import is_cluster, layout
from queueing.connection import connect
from queueing.errors import ConfigError
from queueing.keys import partition_of
from queueing.server import EmbeddedCluster
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.cluster.conftest import PARTITIONS, wait_served
from tests.conftest import start_worker

EXAMPLES = tuple(sorted(load_pipelines(("pipelines.examples",))))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.fixture(scope="module")
def example_workers(cluster_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """One worker process serving every stage of every example pipeline, once it has
    published them."""
    process = start_worker(cluster_settings, *EXAMPLES, BATCHLINE_DEVICE="cpu")
    try:
        wait_served(cluster_settings, EXAMPLES, process)
        yield process
    finally:
        process.terminate()
        process.wait(30)


def test_a_cluster_is_found_by_itself_and_its_partitions_spread_over_the_masters(
    cluster: EmbeddedCluster, cluster_settings: Settings
) -> None:
    assert is_cluster(cluster.url)
    client = connect(cluster_settings)
    try:
        placed = layout(client, PARTITIONS)
    finally:
        client.close()
    assert len(placed) == 3
    assert sorted(p for ps in placed.values() for p in ps) == list(range(PARTITIONS))
    assert all(len(ps) == PARTITIONS // 3 for ps in placed.values())


def test_every_example_runs_end_to_end_through_the_client_and_the_gateway(
    cluster_settings: Settings, example_workers: subprocess.Popen[bytes]
) -> None:
    with Client(cluster_settings) as client:
        specs = client.pipelines()
        for name in EXAMPLES:
            # A job in every partition, so on every master (keyless submits take turns).
            jobs = [client.submit(name, specs[name].example) for _ in range(PARTITIONS)]
            assert {partition_of(job.id) for job in jobs} == set(range(PARTITIONS))
            results = [job.result(timeout=60) for job in jobs]
            # (the same input gives the same output, up to float summation order in a join)
            assert all(_same(result, results[0]) for result in results), (name, results)
        echo = client.submit("echo", {"hello": "cluster"})
        assert echo.result(timeout=30) == {"hello": "cluster"}

    gateway = LiveGateway(cluster_settings).start()
    try:
        with gateway.client() as http:
            for name in EXAMPLES:
                answer = http.post(f"/v1/pipelines/{name}", json={"input": specs[name].example})
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == "done", answer.text
            accepted = http.post(
                "/v1/pipelines/echo/jobs", json={"inputs": list(range(12)), "timeout_s": 60}
            )
            assert accepted.status_code == 202
            urls = [job["url"] for job in accepted.json()]
            docs = [http.get(f"{url}?wait=30").json() for url in urls]
            assert [doc["result"] for doc in docs] == list(range(12))
    finally:
        gateway.stop()


def test_keyless_and_idempotent_batch_submits_span_the_masters(
    cluster_settings: Settings, example_workers: subprocess.Popen[bytes]
) -> None:
    with Client(cluster_settings) as client:
        keyless = client.submit_many("echo", list(range(30)))  # (one partition: all or none)
        keys = [f"order-{i}" for i in range(30)]
        keyed = client.submit_many("echo", list(range(30)), idempotency_keys=keys)
        again = client.submit_many("echo", list(range(30)), idempotency_keys=keys)
        assert [job.id for job in again] == [job.id for job in keyed]
        assert len({partition_of(job.id) for job in keyed}) > 1
        assert [job.result(timeout=60) for job in keyless] == list(range(30))
        assert [job.result(timeout=60) for job in keyed] == list(range(30))
        assert list(client.map("echo", range(200))) == list(range(200))


def test_jobs_of_every_lane_run_on_every_master(
    cluster_settings: Settings, example_workers: subprocess.Popen[bytes]
) -> None:
    """A partition's lanes share its slot: one read takes all three on its master, and a
    composed pipeline hands each job on in its lane."""
    with Client(cluster_settings) as client:
        keys = [f"lane-{i}" for i in range(12)]
        by_lane = {
            lane: client.submit_many("echo", list(range(12)), idempotency_keys=keys, priority=lane)
            for lane in ("high", "low")
        }
        # (the same keys in another lane: the same jobs, as an idempotency key means)
        assert [j.id for j in by_lane["low"]] == [j.id for j in by_lane["high"]]
        assert len({partition_of(job.id) for job in by_lane["high"]}) > 1
        assert [job.result(timeout=60) for job in by_lane["high"]] == list(range(12))
        spec = client.pipelines()["chain"]
        chained = [client.submit("chain", spec.example, priority="low") for _ in range(PARTITIONS)]
        assert {partition_of(job.id) for job in chained} == set(range(PARTITIONS))
        results = [job.result(timeout=60) for job in chained]
        assert all(_same(result, results[0]) for result in results)
        assert list(client.map("echo", range(100), priority="high")) == list(range(100))


def test_the_rq_side_says_it_needs_a_standalone_server(cluster_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="standalone Redis"):
        rq_connection(cluster_settings)
