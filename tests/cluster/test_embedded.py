"""The embedded cluster's own start: a new cluster's node whose port was taken between the
probe and its bind (CI saw it once) starts on other ports, and a start that fails leaves no
node running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import queueing.server
from queueing.errors import BatchlineError
from queueing.server import EmbeddedCluster, free_port
from tests.cluster.conftest import _binary


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port bound by another socket, as an outgoing connection's local port is."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        yield holder.getsockname()[1]


def test_free_ports_lie_outside_the_range_outgoing_connections_take() -> None:
    ephemeral = queueing.server._ephemeral_ports()
    assert all(free_port() not in ephemeral for _ in range(50))


@pytest.mark.parametrize("taken", ["port", "bus_port"])
def test_a_node_whose_port_is_taken_starts_on_others(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch, taken: str
) -> None:
    ports = iter([free_port(), taken_port] if taken == "bus_port" else [taken_port])
    monkeypatch.setattr(queueing.server, "free_port", lambda: next(ports, None) or free_port())
    with EmbeddedCluster(tmp_path / "c", _binary(), masters=1, partitions=2) as cluster:
        (node,) = cluster.nodes
        assert taken_port not in (node.port, node.bus_port)
        with node.client() as client:
            assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")


def test_a_start_that_fails_leaves_no_node_running(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every try of the second node meets a taken port: the first node is stopped too."""
    calls = iter(range(1000))
    monkeypatch.setattr(
        queueing.server,
        "free_port",
        lambda: taken_port if next(calls) >= 2 else free_port(),
    )
    cluster = EmbeddedCluster(tmp_path / "c", _binary(), masters=2, partitions=2)
    with pytest.raises(BatchlineError, match="exited with"):
        cluster.start()
    assert len(cluster.nodes) == 2
    assert not any(node.alive() for node in cluster.nodes)
