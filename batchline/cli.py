"""The ``batchline`` command: up, web, worker, server, status, register, procfile, keygen."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchline import bulk, config, deploy, dlq, notifier
from batchline.up import add_workers_option
from pipelines.loading import load_pipelines, unavailable
from queueing.errors import BatchlineError, ConfigError
from queueing.settings import Settings
from workers.stage import Stage, Topology

log = logging.getLogger("batchline")


DEFAULT_PIPELINES = ("pipelines.examples",)
"""What ``BATCHLINE_PIPELINES`` (or ``--pipelines``) means when it is not set: the examples."""


def _settings(args: argparse.Namespace) -> Settings:
    pipelines = tuple(args.pipelines.split(",")) if getattr(args, "pipelines", None) else None
    settings = Settings.from_env(
        redis_url=getattr(args, "redis_url", None),
        pipelines=pipelines,
        worker_name=getattr(args, "name", None),
        device=getattr(args, "device", None),
    )
    if not settings.pipelines:
        settings = settings.replace(pipelines=DEFAULT_PIPELINES)
    return settings


def load_topologies(
    settings: Settings, *, runnable: bool = False, asked: Sequence[str] | None = None
) -> dict[str, Topology]:
    """The pipelines, compiled; with ``runnable``, only those whose extras are installed.
    Those left out are named in a warning, with the ``pip install`` that brings them (only
    those among the ``asked`` pipelines, when given)."""
    pipelines = load_pipelines(settings.pipelines)
    if runnable:
        for name, reason in sorted(unavailable(pipelines).items()):
            if asked is None or name in asked:
                log.warning("skipping pipeline %s: it %s", name, reason)
            del pipelines[name]
    return {name: p.compile() for name, p in pipelines.items()}


def select_stages(topologies: dict[str, Topology], targets: Sequence[str]) -> list[Stage]:
    """``pipeline`` means all its stages; ``pipeline.stage`` one of them."""
    chosen: list[Stage] = []
    for target in targets:
        pipeline = target.split(".", 1)[0]
        topology = topologies.get(pipeline)
        if topology is None:
            raise ConfigError(
                f"unknown pipeline {pipeline!r}; known: {', '.join(sorted(topologies)) or 'none'} "
                f"(add modules with BATCHLINE_PIPELINES)"
            )
        if "." in target:
            if target not in topology.stages:
                raise ConfigError(
                    f"pipeline {pipeline} has no stage {target!r}; its stages: "
                    f"{', '.join(topology.stages)}"
                )
            chosen.append(topology.stages[target])
        else:
            chosen.extend(topology.stages.values())
    return chosen


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import Worker

    settings = _settings(args)
    asked = sorted({t.split(".", 1)[0] for t in args.targets})
    topologies = load_topologies(settings, runnable=True, asked=asked)
    skipped = unavailable(load_pipelines(settings.pipelines))
    targets = [t for t in args.targets if t.split(".", 1)[0] not in skipped]
    if not targets:
        raise ConfigError("nothing to run here: " + "; ".join(f"{p} {skipped[p]}" for p in asked))
    stages = select_stages(topologies, targets)
    if args.processes:  # forked from this process, each replaced at once if it crashes
        from queueing.streams import consumer_name
        from workers.supervisor import preload_torch, serve_worker, supervise

        if any(stage.needs_device for stage in stages) and settings.device != "cpu":
            preload_torch()

        def make(name: str) -> Worker:
            named = settings.replace(worker_name=name)
            return Worker(list(topologies.values()), stages, named, burst=args.burst)

        return supervise(serve_worker(make), args.processes, consumer_name(settings))
    worker = Worker(list(topologies.values()), stages, settings, burst=args.burst)
    asyncio.run(worker.run())
    return 0


def publish_topologies(settings: Settings, topologies: dict[str, Topology]) -> None:
    """Write the pipelines' specs to the registry and create their consumer groups."""
    from queueing.connection import broker_errors, connect_async, wait_until_ready
    from queueing.registry import publish

    async def run() -> None:
        client = connect_async(settings)
        try:
            await wait_until_ready(client, log, "register")
            with broker_errors():
                await publish(client, settings, [t.spec for t in topologies.values()])
        finally:
            await client.aclose()

    asyncio.run(run())


def cmd_register(args: argparse.Namespace) -> int:
    settings = _settings(args)
    topologies = load_topologies(settings)
    publish_topologies(settings, topologies)
    print(f"registered: {', '.join(sorted(topologies))}")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from api.protocol import BoundedHttpToolsProtocol

    settings = _settings(args)
    if not settings.redis_url:
        raise ConfigError(
            "the gateway needs a Redis server: set REDIS_URL (e.g. redis://localhost:6379/0), "
            "or run `batchline up`, which starts an embedded one"
        )
    # The gateway reads its settings from the environment (in each of its processes).
    os.environ["REDIS_URL"] = settings.redis_url
    uvicorn.run(
        "api.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level.lower(),
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=args.graceful_s,
        http=BoundedHttpToolsProtocol,
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from batchline.up import run_up

    settings = _settings(args)
    if args.cluster and settings.partitions == 1:
        settings = settings.replace(partitions=2 * args.cluster)  # (two per master)
    topologies = load_topologies(settings, runnable=True)
    return run_up(
        settings,
        host=args.host,
        port=args.port,
        topologies=topologies,
        workers=args.workers,
        cluster=args.cluster,
        publish=lambda resolved: publish_topologies(resolved, topologies),
    )


def cmd_procfile(args: argparse.Namespace) -> int:
    from batchline.procfile import procfile

    topologies = load_topologies(_settings(args))
    print(procfile({name: list(t.stages) for name, t in topologies.items()}), end="")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from api.auth import new_key

    key, digest = new_key()
    print(f"key:    {key}")
    print(f"digest: {digest}")
    print("\ngive the key to the client; configure the gateway with the digest:")
    print(f"  BATCHLINE_API_KEYS={digest}   (comma-separate several)")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from queueing.server import EmbeddedCluster, EmbeddedServer

    settings = _settings(args)
    data_dir = Path(args.data_dir or settings.data_dir)
    server: EmbeddedServer | EmbeddedCluster
    if args.cluster:
        partitions = settings.partitions if settings.partitions > 1 else 2 * args.cluster
        server = EmbeddedCluster(
            data_dir / "cluster", settings.redis_server, masters=args.cluster, partitions=partitions
        ).start()
        print(f"REDIS_URL={server.url} BATCHLINE_PARTITIONS={partitions}", flush=True)
    else:
        server = EmbeddedServer(data_dir, settings.redis_server).start()
        print(f"REDIS_URL={server.url}", flush=True)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and server.running():
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from queueing.connection import broker_errors, connect_async
    from queueing.overview import COUNTERS, Overview, overview

    settings = _settings(args)

    async def read() -> Overview:
        client = connect_async(settings)
        try:
            with broker_errors():
                return await overview(client, settings)
        finally:
            await client.aclose()

    view = asyncio.run(read())
    columns = ("next", "done", "failed", "expired", "dead", "redelivered")
    assert set(columns) <= set(COUNTERS)
    rows: list[tuple[str, ...]] = [("stage", "backlog", *columns, "workers")]
    for stage in view.stages.values():
        rows.append(
            (
                stage.name,
                str(stage.backlog),
                *(
                    str(stage.counters[c] + (stage.counters["join"] if c == "next" else 0))
                    for c in columns
                ),
                str(len(stage.workers)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if view.nodes:
        print(f"\ncluster masters: {len(view.nodes)}")
        for node, partitions in sorted(view.nodes.items()):
            print(f"  {node}: partitions {', '.join(map(str, partitions))}")
    print(f"\nlive workers: {len(view.workers)}")
    for name, doc in sorted(view.workers.items()):
        print(f"  {name}: {', '.join(doc.get('stages', []))} on {doc.get('device', '?')}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="batchline", description=__doc__)
    top.add_argument("--log-level", default=os.environ.get("BATCHLINE_LOG_LEVEL", "INFO"))
    sub = top.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--redis-url", help="Redis server (default: REDIS_URL)")
        p.add_argument("--pipelines", help="comma-separated modules defining pipelines")

    default_port = int(os.environ.get("PORT") or 8000)

    up = sub.add_parser(
        "up",
        help="run it all locally: embedded Redis (without REDIS_URL), gateway, workers",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=default_port, help="gateway port (default 8000)")
    up.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="MASTERS",
        help="an embedded Redis Cluster of that many masters instead of one server",
    )
    add_workers_option(up)
    common(up)
    up.set_defaults(run=cmd_up)

    web = sub.add_parser("web", help="run the HTTP gateway (uvicorn api.app:app)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=default_port, help="default: $PORT or 8000")
    web.add_argument("--workers", type=int, default=1, help="gateway processes")
    web.add_argument("--no-access-log", action="store_true")
    web.add_argument(
        "--graceful-s",
        type=float,
        default=5.0,
        help="on SIGTERM, how long open requests (long polls) may finish",
    )
    common(web)
    web.set_defaults(run=cmd_web)

    worker = sub.add_parser("worker", help="run the stages of one or more pipelines")
    worker.add_argument("targets", nargs="+", metavar="PIPELINE[.STAGE]")
    worker.add_argument("--burst", action="store_true", help="drain the streams, then exit")
    worker.add_argument("--name", help="stable consumer name (re-reads its own pending entries)")
    worker.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    worker.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="fork N worker processes and replace any that crashes at once (same name)",
    )
    common(worker)
    worker.set_defaults(run=cmd_worker)

    register = sub.add_parser("register", help="publish the pipelines' specs to the registry")
    common(register)
    register.set_defaults(run=cmd_register)

    server = sub.add_parser("server", help="run the embedded Redis server in the foreground")
    server.add_argument("--data-dir", help="socket and AOF folder (default .batchline)")
    server.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="MASTERS",
        help="run an embedded Redis Cluster of that many masters (loopback ports) instead",
    )
    server.set_defaults(run=cmd_server)

    status = sub.add_parser("status", help="backlog, counters and live workers per stage")
    common(status)
    status.set_defaults(run=cmd_status)

    procfile = sub.add_parser("procfile", help="print a Procfile for the pipelines")
    procfile.add_argument("--pipelines", help="comma-separated modules defining pipelines")
    procfile.set_defaults(run=cmd_procfile)

    keygen = sub.add_parser("keygen", help="make an API key and the digest to configure")
    keygen.set_defaults(run=cmd_keygen)
    dlq.register(sub)
    bulk.register(sub)
    notifier.register(sub)
    deploy.register(sub)
    config.register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.run(args)
        return result
    except BatchlineError as exc:
        print(f"batchline: error: {exc}", file=sys.stderr)
        return 2
