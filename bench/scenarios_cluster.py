"""The same runs on a 3-master Redis Cluster as on the run's standalone server: what a
cluster costs per item, and how evenly it spreads the work.

Each ``cluster-*`` scenario starts its own :class:`~queueing.server.EmbeddedCluster` (3 masters,
no replicas, AOF on with ``appendfsync everysec`` as the standalone server, loopback TCP ports,
:data:`PARTITIONS` partitions placed evenly: 2 per master), runs the body of its standalone twin
on it unchanged (:func:`~bench.scenarios_queue.run_client_scenario`,
:func:`~bench.scenarios_http.run_http_scenario` with one worker and one gateway), and stops
the cluster. Clients, the gateway and the worker get ``BATCHLINE_PARTITIONS`` = :data:`PARTITIONS`;
the worker count is the twin's (one). The goal column is the ratio of items/s to the
standalone twin (``echo-client``, ``mlp-client``, ``http-echo-sync``, ``http-mlp-sync``) when
both ran, e.g. ``python -m bench echo-client mlp-client http-echo-sync http-mlp-sync
'cluster-*'``.

Redis CPU is metered per node process (``/proc``, as every hop's CPU: ``redis@<port>`` in the
JSON, ``redis`` the sum over the nodes). After each run: which master holds which partitions
(:func:`queueing.cluster.layout`) and how many items each partition's stage finished (the
``:done`` counters of its stats hash, warm-up and c1 pass included) and each master's command
calls (``INFO commandstats``, JSON only: what makes one node busier). Derived figures: all nodes'
Redis CPU per item against the standalone server's, the busiest node's share of the Redis CPU
and of the items (an even spread is 1/3), and partitions per master.

``cluster-publish`` prices the wake-up channel: one subscriber on the master that owns a notice
channel's slot, then :data:`NOTICES` notices of :data:`NOTICE_BYTES` bytes published on that
master, first with classic ``PUBLISH`` (which a cluster forwards over its bus to every node),
then with ``SPUBLISH`` (sharded: it stays within the owner's shard, which has no replica here).
Its figures are the CPU per notice of the owning master and of the non-owning nodes, per kind,
and (``idle``) what the nodes spend with nothing published in as long as the ``PUBLISH`` pass
took (cluster bus pings, cron), divided by the same notice count: the floor of the others.
The standalone server is not used by these scenarios; the standalone one speaks over a unix
socket, the cluster over loopback TCP (a cluster client cannot use a socket).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from bench.harness import Context, CpuMeter
from bench.registry import Derived, Goal, scenario
from bench.scenarios_http import ECHO as HTTP_ECHO
from bench.scenarios_http import MLP_TARGET, gateway, run_http_scenario
from bench.scenarios_queue import run_client_scenario
from bench.stats import Result
from bench.workloads import ECHO, MLP, Workload
from queueing.cluster import layout
from queueing.keys import Keys
from queueing.server import EmbeddedCluster
from queueing.settings import Settings

MASTERS = 3
PARTITIONS = 6
"""Partitions of every cluster scenario (two per master)."""
NOTICES = (50_000, 10_000)
"""Notices per kind in ``cluster-publish`` (full, --quick)."""
NOTICE_BYTES = 2048
"""About one batch's notice to one listener (a few finished echo jobs' snapshots)."""
PUBLISH_PIPELINE = 100
"""Notices per round trip in ``cluster-publish``."""
NODE = "redis@"
"""Prefix of a node's name in the CPU figures (``redis@<port>``)."""


class NodesMeter(CpuMeter):
    """A :class:`CpuMeter` whose ``redis`` figure is the sum of the cluster nodes'."""

    def read(self) -> dict[str, float]:
        used = super().read()
        nodes = [s for name, s in used.items() if name.startswith(NODE)]
        if nodes:
            used["redis"] = round(sum(nodes), 3)
        return used


@dataclass
class PartitionedContext(Context):
    """The run's context with :data:`PARTITIONS` partitions for every client, gateway and
    worker (on the run's standalone server: the ``*-p6`` scenarios)."""

    partitions: int = PARTITIONS

    @classmethod
    def of(cls, ctx: Context, **changes: Any) -> Any:
        shared = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(Context)}
        return cls(**{**shared, **changes})

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return super().env({"BATCHLINE_PARTITIONS": str(self.partitions), **(extra or {})})

    def settings(self, namespace: str) -> Settings:
        return super().settings(namespace).replace(partitions=self.partitions)


@dataclass
class ClusterContext(PartitionedContext):
    """The run's context with a cluster in place of the standalone server: the same scenario
    bodies run on it unchanged."""

    cluster: EmbeddedCluster | None = None
    balance: dict[str, Any] = field(default_factory=dict)
    """What :meth:`forget` saw of the last namespace before it went (see :func:`balance`)."""

    @property
    def nodes(self) -> dict[str, int]:
        """``redis@<port>`` -> pid of every node."""
        assert self.cluster is not None
        return {
            f"{NODE}{node.port}": node.process.pid
            for node in self.cluster.nodes
            if node.process is not None
        }

    def redis(self) -> Any:
        return redis.cluster.RedisCluster.from_url(self.redis_url)

    def cpu_meter(self, **pids: int) -> CpuMeter:
        return NodesMeter({"client": os.getpid()}, {**pids, **self.nodes})

    def forget(self, namespace: str) -> None:
        """Record the partitions' layout and items before the keys go (the cluster is
        discarded with the scenario, so nothing else needs deleting)."""
        client = self.redis()
        try:
            self.balance = balance(client, namespace, self.partitions)
            for node in client.get_primaries():
                client.flushall(target_nodes=node)
        finally:
            client.close()


def balance(client: redis.cluster.RedisCluster, namespace: str, partitions: int) -> dict[str, Any]:
    """Per master (``host:port``): its partitions, the items their stages finished, and the
    calls of each command it served (``INFO commandstats``: the whole scenario, set-up
    included)."""
    keys = Keys(namespace)
    done = {}
    for partition in range(partitions):
        counters: Any = client.hgetall(keys.stats(partition))
        done[partition] = sum(
            int(n) for name, n in counters.items() if name.decode().endswith(":done")
        )
    calls: dict[str, dict[str, int]] = {}
    for node in client.get_primaries():
        stats: Any = client.info("commandstats", target_nodes=node)
        calls[str(node.name)] = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in sorted(stats.items(), key=lambda kv: -int(kv[1]["calls"]))
        }
    return {
        master: {
            "partitions": owned,
            "items_done": sum(done[p] for p in owned),
            "commands": calls.get(master, {}),
        }
        for master, owned in sorted(layout(client, partitions).items())
    }


@contextlib.contextmanager
def cluster_context(ctx: Context, name: str) -> Iterator[ClusterContext]:
    """A fresh cluster for one scenario (in the run's scratch folder; its nodes watched by the
    watchdog), stopped on the way out whatever happens."""
    cluster = EmbeddedCluster(
        ctx.workdir / f"cluster-{name}", masters=MASTERS, partitions=PARTITIONS
    )
    try:
        cluster.start()
        for node in cluster.nodes:
            if node.process is not None:
                ctx.processes.watch(node.process.pid)
        yield ClusterContext.of(ctx, redis_url=cluster.url, server_pid=None, cluster=cluster)
    finally:
        cluster.stop()


def with_balance(result: Result, cctx: ClusterContext) -> Result:
    """``result`` with the cluster's balance and per-node CPU shares in its extra."""
    cpu: dict[str, float] = result.extra.get("cpu_s", {})
    nodes = {name: s for name, s in cpu.items() if name.startswith(NODE)}
    total = sum(nodes.values())
    result.extra["cluster"] = {
        "masters": MASTERS,
        "partitions": cctx.partitions,
        "balance": cctx.balance,
        "redis_cpu_share": {n: (s / total if total else None) for n, s in nodes.items()},
    }
    return result


def run_on_cluster(ctx: Context, name: str, body: Callable[[ClusterContext], Result]) -> Result:
    with cluster_context(ctx, name) as cctx:
        return with_balance(body(cctx), cctx)


# -- derived figures ---------------------------------------------------------------------------


def _redis_ratio(this: str, reference: str) -> Derived:
    def compute(results: Mapping[str, Result]) -> float | None:
        mine = results[this].extra.get("cpu_us_per_item", {}).get("redis")
        theirs = results[reference].extra.get("cpu_us_per_item", {}).get("redis")
        return mine / theirs if mine and theirs else None

    return Derived(
        f"Redis CPU per item, all nodes / {reference}'s server",
        (this, reference),
        compute,
        unit="x",
        formula=f"cpu_us_per_item.redis({this}) (sum over the nodes) / that of {reference}",
    )


def _busiest_share(name: str, what: str) -> Derived:
    def compute(results: Mapping[str, Result]) -> float | None:
        cluster = results[name].extra.get("cluster", {})
        if what == "cpu":
            shares = [s for s in cluster.get("redis_cpu_share", {}).values() if s is not None]
            return max(shares) if shares else None
        done = [m["items_done"] for m in cluster.get("balance", {}).values()]
        return max(done) / sum(done) if sum(done) else None

    label = "Redis CPU" if what == "cpu" else "items done"
    return Derived(
        f"busiest master's share of {label} (even: {1 / MASTERS:.2f})",
        (name,),
        compute,
        formula=f"max over the nodes of their {label} / the sum (all nodes)",
    )


def _busiest_node_us(name: str) -> Derived:
    def compute(results: Mapping[str, Result]) -> float | None:
        per_item = results[name].extra.get("cpu_us_per_item", {})
        nodes = [us for node, us in per_item.items() if node.startswith(NODE)]
        return max(nodes) if nodes else None

    return Derived(
        "Redis CPU per item, busiest node",
        (name,),
        compute,
        unit="µs",
        formula="max over the nodes of their CPU seconds during the throughput pass / items",
    )


def _partitions_per_master(name: str) -> Derived:
    def compute(results: Mapping[str, Result]) -> float | None:
        owned = [len(m["partitions"]) for m in results[name].extra["cluster"]["balance"].values()]
        return float(max(owned)) if len(owned) == MASTERS else None

    return Derived(
        f"partitions on the fullest master (of {PARTITIONS}, {MASTERS} masters)",
        (name,),
        compute,
        at_most=PARTITIONS / MASTERS,
        formula="max over the masters of the partitions whose slot each owns",
    )


def _cluster_figures(name: str, reference: str) -> list[Derived]:
    return [
        _redis_ratio(name, reference),
        _busiest_node_us(name),
        _busiest_share(name, "cpu"),
        _busiest_share(name, "items"),
        _partitions_per_master(name),
    ]


# -- the scenarios -----------------------------------------------------------------------------


def _client_scenario(name: str, workload: Workload) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        return run_on_cluster(
            ctx, name, lambda cctx: run_client_scenario(cctx, name, workload, 50_000)
        )

    return run


@scenario(
    "echo-client-p6",
    f"echo via Client.map, one worker, the standalone server, P={PARTITIONS}",
    goals=[Goal("echo-client")],
)
def echo_client_p6(ctx: Context) -> Result:
    return run_client_scenario(PartitionedContext.of(ctx), "echo-client-p6", ECHO, 50_000)


@scenario(
    "http-echo-sync-p6",
    f"POST /v1/pipelines/echo (submit and wait), one gateway and worker, the standalone "
    f"server, P={PARTITIONS}",
    goals=[Goal("http-echo-sync")],
)
def http_echo_sync_p6(ctx: Context) -> Result:
    pctx = PartitionedContext.of(ctx)
    name = "http-echo-sync-p6"
    return run_http_scenario(pctx, name, gateway(pctx, name, "echo"), HTTP_ECHO.sync())


scenario(
    "cluster-echo-client",
    f"echo via Client.map, one worker, {MASTERS}-master cluster, P={PARTITIONS}",
    goals=[Goal("echo-client"), Goal("echo-client-p6")],
    derived=_cluster_figures("cluster-echo-client", "echo-client"),
)(_client_scenario("cluster-echo-client", ECHO))

scenario(
    "cluster-mlp-client",
    f"mlp via Client.map, one worker, {MASTERS}-master cluster, P={PARTITIONS}",
    goals=[Goal("mlp-client")],
    derived=_cluster_figures("cluster-mlp-client", "mlp-client"),
)(_client_scenario("cluster-mlp-client", MLP))


def _http_scenario(name: str, pipeline: str, shape: Any) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        return run_on_cluster(
            ctx,
            name,
            lambda cctx: run_http_scenario(cctx, name, gateway(cctx, name, pipeline), shape),
        )

    return run


scenario(
    "cluster-http-echo-sync",
    f"POST /v1/pipelines/echo (submit and wait), one gateway and worker, {MASTERS}-master "
    f"cluster, P={PARTITIONS}",
    goals=[Goal("http-echo-sync"), Goal("http-echo-sync-p6")],
    derived=_cluster_figures("cluster-http-echo-sync", "http-echo-sync"),
)(_http_scenario("cluster-http-echo-sync", "echo", HTTP_ECHO.sync()))

scenario(
    "cluster-http-mlp-sync",
    f"POST /v1/pipelines/mlp (submit and wait), one gateway and worker, {MASTERS}-master "
    f"cluster, P={PARTITIONS}",
    goals=[Goal("http-mlp-sync")],
    derived=_cluster_figures("cluster-http-mlp-sync", "http-mlp-sync"),
)(_http_scenario("cluster-http-mlp-sync", "mlp", MLP_TARGET.sync()))


# -- the wake-up channel -----------------------------------------------------------------------


def _drain(subscriber: Any, stop: threading.Event) -> None:
    """Read (and drop) what the subscriber receives, so its output buffer stays small."""
    while not stop.is_set():
        subscriber.get_message(timeout=0.1)


def _publish_pass(
    cctx: ClusterContext, owner: redis.Redis, command: str, channel: str, n: int
) -> tuple[float, dict[str, float]]:
    """``n`` notices with ``command`` (``PUBLISH`` or ``SPUBLISH``) on ``owner``; (seconds,
    CPU seconds per node)."""
    payload = b"x" * NOTICE_BYTES
    meter = NodesMeter({}, cctx.nodes)
    started = time.perf_counter()
    for start in range(0, n, PUBLISH_PIPELINE):
        pipe = owner.pipeline(transaction=False)
        for _ in range(min(PUBLISH_PIPELINE, n - start)):
            pipe.execute_command(command, channel, payload)
        pipe.execute()
    seconds = time.perf_counter() - started
    time.sleep(0.5)  # (the other nodes handle the bus messages after the owner has answered)
    return seconds, meter.read()


def _per_notice(cpu: dict[str, float], owner: str, n: int) -> dict[str, float]:
    others = [s for name, s in cpu.items() if name.startswith(NODE) and name != owner]
    return {
        "owner_us": round(cpu.get(owner, 0.0) / n * 1e6, 2),
        "each_other_node_us": round(sum(others) / max(len(others), 1) / n * 1e6, 2),
        "all_nodes_us": round(cpu.get("redis", 0.0) / n * 1e6, 2),
    }


@scenario(
    "cluster-publish",
    f"wake-up notices ({NOTICE_BYTES} B) on a {MASTERS}-master cluster: PUBLISH (broadcast to "
    "every node) vs SPUBLISH (the owner's shard), Redis CPU per notice on each node",
    derived=[
        Derived(
            f"{kind} CPU per notice on {where}",
            ("cluster-publish",),
            lambda r, kind=kind, key=key: r["cluster-publish"].extra["per_notice"][kind][key],
            unit="µs",
        )
        for kind in ("PUBLISH", "SPUBLISH", "idle")
        for where, key in (
            ("the owning master", "owner_us"),
            ("each non-owning node", "each_other_node_us"),
        )
    ],
)
def cluster_publish(ctx: Context) -> Result:
    n = ctx.count(*NOTICES)
    name = "cluster-publish"
    channel = Keys(ctx.namespace(name)).notify(0, "bench")
    with cluster_context(ctx, name) as cctx:
        assert cctx.cluster is not None
        node = cctx.cluster.master_of(channel)
        owner_name = f"{NODE}{node.port}"
        stop = threading.Event()
        passes: dict[str, Any] = {}
        with (
            contextlib.closing(node.client()) as owner,
            contextlib.closing(node.client()) as listening,
        ):
            subscriber = listening.pubsub(ignore_subscribe_messages=True)
            subscriber.subscribe(channel)
            subscriber.ssubscribe(channel)
            reader = threading.Thread(target=_drain, args=(subscriber, stop), daemon=True)
            reader.start()
            try:
                for command in ("PUBLISH", "SPUBLISH"):
                    _publish_pass(cctx, owner, command, channel, min(n, 2000))  # warm-up
                    seconds, cpu = _publish_pass(cctx, owner, command, channel, n)
                    passes[command] = {"seconds": seconds, "cpu_s": cpu}
                idle = NodesMeter({}, cctx.nodes)
                time.sleep(passes["PUBLISH"]["seconds"] + 0.5)
                passes["idle"] = {"seconds": passes["PUBLISH"]["seconds"], "cpu_s": idle.read()}
            finally:
                stop.set()
                reader.join()
                subscriber.close()
    per_notice = {kind: _per_notice(p["cpu_s"], owner_name, n) for kind, p in passes.items()}
    return Result(
        name,
        n,
        passes["SPUBLISH"]["seconds"],
        extra={
            "notice_bytes": NOTICE_BYTES,
            "owner": owner_name,
            "subscriber": "one connection on the owner: SUBSCRIBE and SSUBSCRIBE to the channel",
            "passes": passes,
            "per_notice": per_notice,
            "items_per_s_publish": n / passes["PUBLISH"]["seconds"],
        },
    )
