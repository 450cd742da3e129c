"""A `submit_many` whose inputs span partitions while one master is down: the partitions on
live masters take their inputs, and the caller is told which inputs were queued (with their
job ids) and which were not (nothing of theirs was written)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.loading import load_pipelines
from queueing.client import Client
from queueing.cluster import layout
from queueing.connection import connect
from queueing.errors import PartiallyQueued
from queueing.keys import Keys, partition_of
from queueing.server import EmbeddedCluster
from queueing.settings import Settings
from tests.cluster.conftest import PARTITIONS, _binary
from tests.support import register


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "c", _binary(), masters=3, partitions=PARTITIONS) as nodes:
        yield nodes


def test_a_submit_many_across_partitions_says_which_inputs_were_queued(
    own_cluster: EmbeddedCluster,
) -> None:
    settings = Settings(redis_url=own_cluster.url, partitions=PARTITIONS, retry_s=3.0)
    register(settings, load_pipelines(("pipelines.examples.echo",))["echo"])
    # (not the master of the registry, a single key that every submit reads first)
    registry = own_cluster.master_of(Keys().registry)
    down = next(
        master
        for p in range(PARTITIONS)
        if (master := own_cluster.master_of(Keys().stats(p))) is not registry
    )
    client = connect(settings)
    try:
        dead = set(layout(client, PARTITIONS)[down.name])
    finally:
        client.close()
    own_cluster.kill(down)
    keys = [f"k{i}" for i in range(60)]
    with Client(settings) as client:
        with pytest.raises(PartiallyQueued) as caught:
            client.submit_many("echo", list(range(60)), idempotency_keys=keys)
        error = caught.value
        assert error.queued
        assert error.failed
        assert sorted([*error.queued, *error.failed]) == list(range(60))
        assert {client.core.partition_for("echo", keys[i]) for i in error.failed} == dead
        for index, job_id in error.queued.items():
            assert partition_of(job_id) not in dead
            assert client.core.partition_for("echo", keys[index]) == partition_of(job_id)
            assert client.job(job_id).status().value == "queued"
