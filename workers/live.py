"""Live batch settings in a worker: read its stages' settings (one HMGET of the registry every
:data:`~queueing.live_config.POLL_S`) and hand changes to the stage loops, which batch with them
from their next batch on. See :mod:`queueing.live_config`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from queueing.connection import OutageLog
from queueing.live_config import POLL_S, LiveSettings, read_live
from queueing.settings import Settings
from workers.batching import BatchConfig
from workers.loop import StageLoop

log = logging.getLogger(__name__)


def configured(declared: BatchConfig, live: LiveSettings | None) -> BatchConfig:
    """The settings in force: those declared in code, with the live ones over them."""
    if live is None:
        return declared
    return declared.with_settings(**live.values)


class LiveSettingsWatcher:
    """Applies the live settings of a worker's stage loops: once at start-up (:meth:`apply`,
    before the loops read: the settings in force from the first batch), then every
    :data:`~queueing.live_config.POLL_S` (:meth:`run`)."""

    def __init__(self, client: Any, settings: Settings, loops: Sequence[StageLoop]) -> None:
        self.client = client
        self.settings = settings
        self.loops = loops
        self.seen: dict[str, LiveSettings | None] = {}
        self.outage = OutageLog(log, "live settings")

    async def apply(self) -> None:
        """One read; a Redis error is logged (once per outage), not raised."""
        with self.outage.guard():
            await apply_live_settings(self.client, self.settings, self.loops, self.seen)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: apply each change."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await stop.wait()
            if not stop.is_set():
                await self.apply()


async def apply_live_settings(
    client: Any,
    settings: Settings,
    loops: Sequence[StageLoop],
    seen: dict[str, LiveSettings | None],
) -> None:
    """One read of the loops' live settings; loops whose settings changed get them."""
    found = await read_live(client, settings, [loop.stage.name for loop in loops])
    for loop in loops:
        name = loop.stage.name
        live = found.get(name)
        if name in seen and seen[name] == live:
            continue
        seen[name] = live
        try:
            config = configured(loop.handler.config, live)
        except ValueError as exc:
            log.warning("stage %s: live settings ignored: %s", name, exc)
            continue
        if config != loop.config:
            loop.apply_config(config)
            log.info(
                "stage %s: batching with max_batch_size=%s batch_wait_timeout_s=%s "
                "max_latency_ms=%s lane_weights=%s (%s)",
                name,
                config.max_batch_size,
                config.batch_wait_timeout_s,
                config.max_latency_ms,
                ",".join(map(str, config.lane_weights)),
                "live settings" if live else "as declared",
            )
