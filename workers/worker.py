"""A worker process: runs the loops of one or more stages until SIGTERM (or, in burst mode,
until their streams are empty).

SIGTERM / SIGINT: stop reading, finish and hand off the batches in hand, exit 0. SIGKILL:
nothing is lost either; the entries this process held stay pending and a live worker claims
them once the visibility timeout has passed without a heartbeat from this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from queueing.connection import connect_async
from queueing.keys import Keys
from queueing.settings import Settings
from queueing.streams import StageQueue, consumer_name, heartbeat, retire
from workers.device import limit_torch_threads, resolve_device, torch_threads
from workers.loop import StageLoop
from workers.stage import Stage, Topology

log = logging.getLogger(__name__)


async def publish(client: Any, settings: Settings, topologies: Sequence[Topology]) -> None:
    """Write the pipelines' specs to the registry and create their consumer groups, so that
    clients and gateways can submit before any worker of theirs has started reading."""
    keys = Keys(settings.prefix)
    if topologies:
        await client.hset(keys.registry, mapping={t.spec.name: t.spec.encode() for t in topologies})
    for topology in topologies:
        for stage in topology.stages.values():
            await StageQueue(client, settings, stage.name, "publisher").ensure_groups()


class Worker:
    """Runs ``stages`` (of the pipelines in ``topologies``) in one process."""

    def __init__(
        self,
        topologies: Sequence[Topology],
        stages: Sequence[Stage],
        settings: Settings,
        *,
        burst: bool = False,
    ) -> None:
        if not stages:
            raise ValueError("a worker needs at least one stage")
        self.topologies = list(topologies)
        self.stages = list(stages)
        self.settings = settings
        self.burst = burst
        self.consumer = consumer_name(settings)
        self.stop = asyncio.Event()
        self.loops: list[StageLoop] = []

    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.info("worker %s: stopping after the batches in hand", self.consumer)
            self.stop.set()

    async def run(self) -> None:
        client = connect_async(self.settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await publish(client, self.settings, self.topologies)
            # Only stages with a setup(device) hook need one (and torch imported to find it).
            needs_device = any(stage.needs_device for stage in self.stages)
            device = resolve_device(self.settings.device) if needs_device else "cpu"
            if needs_device:
                limit_torch_threads(torch_threads(self.settings.torch_threads))
            for stage in self.stages:
                handler = await asyncio.to_thread(stage.load, device)
                queue = StageQueue(client, self.settings, stage.name, self.consumer)
                self.loops.append(StageLoop(stage, handler, queue, self.settings, burst=self.burst))
            by_name = {loop.stage.name: loop for loop in self.loops}
            for stage_loop in self.loops:
                for target in {
                    *stage_loop.stage.next,
                    *stage_loop.stage.routes,
                    stage_loop.stage.join,
                }:
                    if target in by_name:
                        by_name[target].upstream.append(stage_loop)
            info = {
                "stages": [stage.name for stage in self.stages],
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "device": device,
                "started_at": time.time(),
            }
            await heartbeat(client, self.settings, self.consumer, info)
            beats = asyncio.create_task(self._beat(client, info))
            log.info(
                "worker %s: serving %s on %s",
                self.consumer,
                ", ".join(s.name for s in self.stages),
                device,
            )
            try:
                async with asyncio.TaskGroup() as group:
                    for stage_loop in self.loops:
                        group.create_task(stage_loop.run(self.stop), name=stage_loop.stage.name)
            finally:
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
            await retire(client, self.settings, self.consumer)
            log.info(
                "worker %s: stopped after %d items",
                self.consumer,
                sum(loop.processed for loop in self.loops),
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await client.aclose()

    async def _beat(self, client: Any, info: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await heartbeat(client, self.settings, self.consumer, info)
            except Exception:
                log.exception("worker %s: heartbeat failed; retrying", self.consumer)
