"""The embedded cluster's own start: a new cluster's node whose port was taken between the
probe and its bind (CI saw it once) starts on other ports, a server of another process on its
port is not taken for it, and a start that fails leaves no node running."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
import redis

import queueing.server
from queueing.errors import BatchlineError
from queueing.server import EmbeddedCluster, find_server_binary, free_port
from tests.cluster.conftest import _binary
from tests.support import wait_until


def _room_outside_the_ephemeral_range() -> bool:
    ephemeral = queueing.server._ephemeral_ports()
    return max(ephemeral.start - 10000, 65536 - ephemeral.stop) > 1000


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port bound by another socket, as an outgoing connection's local port is."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        yield holder.getsockname()[1]


def handing_out(
    monkeypatch: pytest.MonkeyPatch, first: list[int | None], then: int | None = None
) -> None:
    """``free_port`` hands out ``first`` (None: a free port), then ``then`` or free ports."""
    ports = iter(first)

    def fake(exclude: Collection[int] = ()) -> int:
        port = next(ports, then)
        return free_port(exclude) if port is None else port

    monkeypatch.setattr(queueing.server, "free_port", fake)


@pytest.mark.skipif(
    not _room_outside_the_ephemeral_range(), reason="no room outside the ephemeral range here"
)
def test_free_ports_lie_outside_the_range_outgoing_connections_take() -> None:
    ephemeral = queueing.server._ephemeral_ports()
    handed = {free_port() for _ in range(50)}
    assert not handed & set(ephemeral)
    assert not {free_port(exclude=handed) for _ in range(200)} & handed


@pytest.mark.parametrize("taken", ["port", "bus_port"])
def test_a_node_whose_port_is_taken_starts_on_others(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch, taken: str
) -> None:
    handing_out(monkeypatch, [None, taken_port] if taken == "bus_port" else [taken_port])
    with EmbeddedCluster(tmp_path / "c", _binary(), masters=1, partitions=2) as cluster:
        (node,) = cluster.nodes
        assert taken_port not in (node.port, node.bus_port)
        with node.client() as client:
            assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")


def test_a_server_of_another_process_on_the_port_is_not_taken_for_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers PING on the node's port: the node, which could not bind, is started on
    others, and the other server is left alone (not made part of the cluster)."""
    port = free_port()
    other = subprocess.Popen(
        [find_server_binary(_binary()), "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        with redis.Redis(port=port) as client:

            def answers() -> bool:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            wait_until(answers, 10, "the other server")
            handing_out(monkeypatch, [port])
            with EmbeddedCluster(tmp_path / "c", _binary(), masters=1, partitions=2) as cluster:
                (node,) = cluster.nodes
                assert node.port != port
            assert client.info("cluster")["cluster_enabled"] == 0
            assert client.dbsize() == 0
    finally:
        other.kill()
        other.wait()


def test_a_start_that_fails_leaves_no_node_running(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every try of the second node meets a taken port: the first node is stopped too, and
    nothing of the new cluster is left to start again from."""
    handing_out(monkeypatch, [None, None], then=taken_port)
    cluster = EmbeddedCluster(tmp_path / "c", _binary(), masters=2, partitions=2)
    started = cluster.nodes  # (start() adds to this list; a failed start drops it)
    with pytest.raises(BatchlineError, match="exited with"):
        cluster.start()
    assert len(started) == 2
    assert not any(node.alive() for node in started)
    assert cluster.nodes == []
    assert not list((tmp_path / "c").glob("node-*/nodes.conf"))
    assert not (tmp_path / "c" / "ports.json").exists()
