"""A worker process: runs the loops of one or more stages until SIGTERM (or, in burst mode,
until their streams are empty).

SIGTERM / SIGINT: stop reading, finish and hand off the batches in hand, exit 0. SIGKILL:
nothing is lost either; the entries this process held stay pending and a live worker claims
them once the visibility timeout has passed without a heartbeat from this one. SIGUSR1 logs
what each of its tasks is waiting for, and every thread's stack (to see why a worker idles).

At start-up a worker waits for a server that is still loading its dataset, then publishes its
pipelines and sweeps its stages (:mod:`queueing.housekeeping`: consumers and workers that are
gone); the sweep repeats every :data:`SWEEP_EVERY` visibility timeouts. A heartbeat that fails
while Redis is away is logged once, not per beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from queueing import registry
from queueing.connection import (
    REDIS_DOWN,
    OutageLog,
    broker_errors,
    connect_async,
    until_written,
    wait_until_ready,
)
from queueing.heap import settle_heap
from queueing.housekeeping import Swept, sweep
from queueing.settings import Settings
from queueing.streams import StageQueue, consumer_name, heartbeat, retire
from queueing.tasks import cancel_and_wait
from workers.device import limit_torch_threads, resolve_device, torch_threads
from workers.live import LiveSettingsWatcher
from workers.loop import StageLoop
from workers.stage import Stage, Topology
from workers.streaming import StreamingLoop

log = logging.getLogger(__name__)


SWEEP_EVERY = 10
"""Housekeeping runs at start-up and then every this many visibility timeouts."""


async def publish(client: Any, settings: Settings, topologies: Sequence[Topology]) -> None:
    """Write the pipelines' specs to the registry and create their consumer groups, so that
    clients and gateways can submit before any worker of theirs has started reading."""
    await registry.publish(client, settings, [topology.spec for topology in topologies])


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
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, self.dump_tasks)
        try:
            await wait_until_ready(client, log, f"worker {self.consumer}: start-up")
            full = OutageLog(log, f"worker {self.consumer}: start-up")
            with broker_errors():
                await until_written(lambda: publish(client, self.settings, self.topologies), full)
            # Only stages with a setup(device) hook need one (and torch imported to find it).
            needs_device = any(stage.needs_device for stage in self.stages)
            device = resolve_device(self.settings.device) if needs_device else "cpu"
            if needs_device:
                limit_torch_threads(torch_threads(self.settings.torch_threads))
            for stage in self.stages:
                handler = await asyncio.to_thread(stage.load, device)
                queue = StageQueue(client, self.settings, stage.name, self.consumer)
                kind = StreamingLoop if handler.streaming else StageLoop
                self.loops.append(kind(stage, handler, queue, self.settings, burst=self.burst))
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
            with broker_errors():
                await until_written(
                    lambda: heartbeat(client, self.settings, self.consumer, info), full
                )
            await self._sweep(client, OutageLog(log, f"worker {self.consumer}: housekeeping"))
            watcher = LiveSettingsWatcher(client, self.settings, self.loops)
            await watcher.apply()
            settle_heap()  # (the models are loaded: start-up is over)
            beats = asyncio.create_task(self._beat(client, info))
            live = asyncio.create_task(watcher.run(self.stop))
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
                await cancel_and_wait(beats, live)
            try:
                await retire(client, self.settings, self.consumer)
            except REDIS_DOWN as exc:
                log.warning(
                    "worker %s: could not leave the worker registry (%s); housekeeping will "
                    "prune it",
                    self.consumer,
                    exc,
                )
            log.info(
                "worker %s: stopped after %d items",
                self.consumer,
                sum(loop.processed for loop in self.loops),
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await client.aclose()

    def dump_tasks(self) -> None:
        """Log every asyncio task with the stack it waits in, then every thread's stack."""
        text = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=text)
        log.warning("worker %s: tasks:\n%s", self.consumer, text.getvalue())
        faulthandler.dump_traceback(all_threads=True)

    async def _beat(self, client: Any, info: dict[str, Any]) -> None:
        """Heartbeat of the worker registry; housekeeping every SWEEP_EVERY visibility
        timeouts. Failures (Redis away) are logged once per outage, not per beat."""
        beats = OutageLog(log, f"worker {self.consumer}: heartbeat")
        sweeps = OutageLog(log, f"worker {self.consumer}: housekeeping")
        sweep_every = SWEEP_EVERY * self.settings.visibility_timeout_s
        next_sweep = time.monotonic() + sweep_every
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            with beats.guard():
                await heartbeat(client, self.settings, self.consumer, info)
            if time.monotonic() >= next_sweep and not beats.failing:
                next_sweep = time.monotonic() + sweep_every
                await self._sweep(client, sweeps)

    async def _sweep(self, client: Any, outage: OutageLog) -> Swept:
        """Forget this worker's stages' consumers and the workers that are gone (see
        :mod:`queueing.housekeeping`); a failure is logged and left for the next sweep."""
        swept = Swept()
        with outage.guard():
            swept = await sweep(client, self.settings, [stage.name for stage in self.stages])
        if swept:
            log.info(
                "worker %s: housekeeping removed %d idle consumer(s)%s and %d gone worker(s)%s",
                self.consumer,
                len(swept.consumers),
                _listed(f"{stage}/{name}" for stage, name in swept.consumers),
                len(swept.workers),
                _listed(swept.workers),
            )
        return swept


def _listed(names: Any, most: int = 5) -> str:
    names = list(names)
    if not names:
        return ""
    shown = ", ".join(names[:most])
    return f" ({shown}{', ...' if len(names) > most else ''})"
