"""A partition's slot migrated to another master while jobs flow through it: the clients and
the worker follow it (ASK / MOVED / TRYAGAIN are retried), and every job ends once."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import pytest

from queueing.client import Client
from queueing.cluster import layout, partition_slot
from queueing.connection import connect
from queueing.server import EmbeddedCluster
from queueing.settings import Settings
from tests.cluster.conftest import PARTITIONS, wait_served
from tests.conftest import start_worker


@pytest.fixture
def echo_worker(cluster_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(cluster_settings, "echo", BATCHLINE_DEVICE="cpu")
    try:
        wait_served(cluster_settings, ["echo"], process)
        yield process
    finally:
        process.terminate()
        process.wait(30)


def test_a_partition_migrated_mid_load_loses_nothing(
    cluster: EmbeddedCluster, cluster_settings: Settings, echo_worker: subprocess.Popen[bytes]
) -> None:
    client = connect(cluster_settings)
    try:
        before = layout(client, PARTITIONS)
    finally:
        client.close()
    source = next(node for node, parts in before.items() if 0 in parts)
    target = next(n for n in cluster.nodes if n.name != source and n.alive())
    results: list[int] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with Client(cluster_settings) as mapper:
                results.extend(mapper.map("echo", range(3000), max_in_flight=200))
        except BaseException as exc:
            errors.append(exc)

    mapper = threading.Thread(target=load)
    mapper.start()
    while not results and mapper.is_alive():
        mapper.join(0.05)
    moved = cluster.migrate(partition_slot(0), target)
    mapper.join(120)
    assert not mapper.is_alive()
    assert errors == []
    assert results == list(range(3000))
    assert moved > 0
    client = connect(cluster_settings)
    try:
        after = layout(client, PARTITIONS)
    finally:
        client.close()
    assert 0 in after[target.name]
    assert echo_worker.poll() is None
