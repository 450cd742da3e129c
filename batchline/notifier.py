"""``batchline notifier``: deliver the webhooks of ended jobs (see :mod:`queueing.notifier`)."""

from __future__ import annotations

import argparse
from typing import Any

from queueing.settings import Settings


def cmd_notifier(args: argparse.Namespace) -> int:
    from queueing.notifier import Notifier

    settings = Settings.from_env(redis_url=args.redis_url)
    Notifier(settings).run(once=args.once)
    return 0


def register(sub: Any) -> None:
    """Add ``notifier`` to the ``batchline`` parser's subparsers."""
    notifier = sub.add_parser(
        "notifier", help="enqueue webhook deliveries (rq) as jobs with a webhook end"
    )
    notifier.add_argument("--redis-url", help="Redis server (default: REDIS_URL)")
    notifier.add_argument("--once", action="store_true", help="one sweep of the pending, then exit")
    notifier.set_defaults(run=cmd_notifier)
