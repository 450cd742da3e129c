"""``batchline config``: show, set and reset a stage's live batch settings (see
:mod:`queueing.live_config`)::

    batchline config set mlp.classify max_batch_size=64 batch_wait_timeout_s=auto
    batchline config set mlp.classify lane_weights=8,4,1
    batchline config show mlp.classify
    batchline config reset mlp.classify
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from queueing.cluster import AsyncRedis
from queueing.connection import broker_errors, connect_async
from queueing.errors import ConfigError
from queueing.live_config import (
    SETTINGS,
    BadSetting,
    parse_pairs,
    reset_settings,
    set_settings,
    stage_spec,
)
from queueing.registry import StageSpec
from queueing.settings import Settings


def register(sub: Any) -> None:
    """Add ``config`` and its subcommands to the ``batchline`` parser's subparsers."""
    config = sub.add_parser(
        "config", help="show, set or reset a stage's batch settings while its workers run"
    )
    config.add_argument("--redis-url", help="Redis server (default: REDIS_URL)")
    actions = config.add_subparsers(dest="config_command", required=True)

    show = actions.add_parser("show", help="a stage's batch settings in force, and since when")
    show.add_argument("stage", metavar="PIPELINE.STAGE")
    show.set_defaults(run=_command(_show))

    change = actions.add_parser(
        "set",
        help=f"change settings live ({', '.join(SETTINGS)}); workers apply them within a second",
    )
    change.add_argument("stage", metavar="PIPELINE.STAGE")
    change.add_argument(
        "values",
        nargs="+",
        metavar="NAME=VALUE",
        help="e.g. max_batch_size=64, batch_wait_timeout_s=auto, max_latency_ms=20, "
        "lane_weights=8,4,1",
    )
    change.set_defaults(run=_command(_set))

    reset = actions.add_parser("reset", help="back to the settings declared in code")
    reset.add_argument("stage", metavar="PIPELINE.STAGE")
    reset.set_defaults(run=_command(_reset))


Action = Callable[[AsyncRedis, Settings, argparse.Namespace], Awaitable[int]]


def _command(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = Settings.from_env(redis_url=args.redis_url)
        if not settings.redis_url:
            raise ConfigError("config needs the Redis server: set REDIS_URL or pass --redis-url")

        async def go() -> int:
            client = connect_async(settings)
            try:
                with broker_errors():
                    return await action(client, settings, args)
            finally:
                await client.aclose()

        try:
            return asyncio.run(go())
        except ValueError as exc:  # a bad stage name or setting (BadSetting)
            raise ConfigError(str(exc)) from None

    return run


async def _show(client: AsyncRedis, settings: Settings, args: argparse.Namespace) -> int:
    _print(await stage_spec(client, settings, args.stage))
    return 0


async def _set(client: AsyncRedis, settings: Settings, args: argparse.Namespace) -> int:
    try:
        values = parse_pairs(args.values)
    except BadSetting as exc:
        raise ConfigError(str(exc)) from None
    _print(await set_settings(client, settings, args.stage, values))
    return 0


async def _reset(client: AsyncRedis, settings: Settings, args: argparse.Namespace) -> int:
    await stage_spec(client, settings, args.stage)  # unknown stage: an error, not a no-op
    dropped = await reset_settings(client, settings, args.stage)
    if not dropped:
        print(f"{args.stage}: no live settings to reset")
    _print(await stage_spec(client, settings, args.stage))
    return 0


def _print(spec: StageSpec) -> None:
    since = (
        "as declared in code"
        if spec.settings_since is None
        else "live since "
        + datetime.datetime.fromtimestamp(spec.settings_since, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%SZ"
        )
    )
    print(f"{spec.name} ({since})")
    print(f"  max_batch_size:       {spec.max_batch_size}")
    print(f"  batch_wait_timeout_s: {spec.batch_wait_timeout_s}")
    print(f"  max_latency_ms:       {spec.max_latency_ms}")
    print(f"  lane_weights:         {','.join(map(str, spec.lane_weights))}")
    if spec.batch_size_fn:
        print(f"  batch_size_fn:        {spec.batch_size_fn}")
