"""Fixtures: a real Redis Cluster of loopback servers (:class:`EmbeddedCluster`), of the
session's server binary (``BATCHLINE_TEST_REDIS_SERVER`` picks another, e.g. Debian's 7.0).

``cluster`` has 3 masters and no replica and is shared by the module; ``replicated`` has a
replica per master and is the test's own (it may kill nodes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from queueing.client import Client
from queueing.server import EmbeddedCluster
from queueing.settings import Settings

PARTITIONS = 6


def _binary() -> str | None:
    return os.environ.get("BATCHLINE_TEST_REDIS_SERVER") or None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(
        tmp_path_factory.mktemp("cluster"), _binary(), masters=3, partitions=PARTITIONS
    )
    with nodes:
        yield nodes


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(
        tmp_path / "cluster", _binary(), masters=3, replicas=1, partitions=PARTITIONS
    )
    with nodes:
        yield nodes


def flushed(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        if node.alive():
            client = node.client()
            try:
                if client.info("replication").get("role") == "master":
                    client.flushall()
            finally:
                client.close()


@pytest.fixture(scope="module")
def cluster_settings(cluster: EmbeddedCluster) -> Settings:
    flushed(cluster)
    return Settings(
        redis_url=cluster.url,
        partitions=PARTITIONS,
        visibility_timeout_s=2.0,
        block_ms=200,
        pipelines=("pipelines.examples",),
    )


def wait_served(settings: Settings, names: Iterable[str], *workers: Popen[bytes]) -> None:
    """Return once the workers have published the pipelines ``names``."""
    with Client(settings) as client:
        limit = time.monotonic() + 90
        while not set(names) <= set(client.pipelines()):
            assert time.monotonic() < limit, "the workers did not publish their pipelines"
            assert all(w.poll() is None for w in workers), "a worker exited"
            time.sleep(0.2)
