"""``batchline dlq``: list, show, requeue and purge a stage's dead letters
(see :mod:`queueing.deadletter`)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from queueing.connection import broker_errors, connect_async
from queueing.deadletter import DeadLetters, Requeue, Requeued
from queueing.errors import ConfigError
from queueing.settings import Settings

T = TypeVar("T")


def register(sub: Any) -> None:
    """Add ``dlq`` and its subcommands to the ``batchline`` parser's subparsers."""
    dlq = sub.add_parser("dlq", help="list, show, requeue or purge a stage's dead letters")
    dlq.add_argument("--redis-url", help="Redis server (default: REDIS_URL)")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)

    listing = actions.add_parser("list", help="a stage's dead letters with their reasons")
    listing.add_argument("stage", metavar="PIPELINE.STAGE")
    listing.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    listing.set_defaults(run=_command(_list))

    show = actions.add_parser("show", help="one job's dead letter, payload included")
    show.add_argument("job_id", metavar="ID")
    show.set_defaults(run=_command(_show))

    requeue = actions.add_parser(
        "requeue", help="put a job (or --all of a stage's) back on the stage it died in"
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", metavar="ID")
    which.add_argument("--all", metavar="PIPELINE.STAGE", dest="all_of")
    requeue.set_defaults(run=_command(_requeue))

    purge = actions.add_parser("purge", help="delete a stage's dead letters (jobs stay failed)")
    purge.add_argument("stage", metavar="PIPELINE.STAGE")
    purge.set_defaults(run=_command(_purge))


Action = Callable[[DeadLetters, argparse.Namespace], Awaitable[int]]


def _command(action: Action) -> Callable[[argparse.Namespace], int]:
    """A subcommand's ``run``: ``action`` with the dead letters of the configured server."""

    def run(args: argparse.Namespace) -> int:
        settings = Settings.from_env(redis_url=args.redis_url)
        if not settings.redis_url:
            raise ConfigError("dlq needs the Redis server: set REDIS_URL or pass --redis-url")

        async def go() -> int:
            client = connect_async(settings)
            try:
                with broker_errors():
                    return await action(DeadLetters(client, settings), args)
            finally:
                await client.aclose()

        try:
            return asyncio.run(go())
        except ValueError as exc:  # a bad stage name
            raise ConfigError(str(exc)) from None

    return run


async def _list(letters: DeadLetters, args: argparse.Namespace) -> int:
    found = await letters.newest(args.stage, args.limit)
    total = (await letters.counts([args.stage]))[args.stage]
    print(f"{args.stage}: {total} dead letter{'s' if total != 1 else ''}")
    for letter in found:
        print(f"  {_when(letter.died_at)}  {letter.job_id or '(no job)':<38}  {letter.reason}")
    if total > len(found):
        print(f"  ... and {total - len(found)} older (--limit)")
    return 0


async def _show(letters: DeadLetters, args: argparse.Namespace) -> int:
    letter = await letters.find(args.job_id)
    if letter is None:
        print(f"no dead letter for job {args.job_id}")
        return 1
    for name, value in letter.to_dict(with_data=True).items():
        if name == "died_at" or name == "enqueued_at":
            value = _when(value) if value is not None else "-"
        print(f"{name + ':':<13}{value}")
    return 0


async def _requeue(letters: DeadLetters, args: argparse.Namespace) -> int:
    if args.all_of:
        answers = await letters.requeue_all(args.all_of)
    else:
        letter = await letters.find(args.job_id)
        if letter is None:
            print(f"no dead letter for job {args.job_id}")
            return 1
        answers = [await letters.requeue(letter)]
    for answer in answers:
        print(answer.message)
    done = sum(answer.outcome is Requeue.REQUEUED for answer in answers)
    if args.all_of:
        print(f"requeued {done} of {len(answers)}")
    return 0 if _all_requeued(answers) else 1


async def _purge(letters: DeadLetters, args: argparse.Namespace) -> int:
    print(f"{args.stage}: purged {await letters.purge(args.stage)} dead letters")
    return 0


def _all_requeued(answers: list[Requeued]) -> bool:
    return all(answer.outcome is Requeue.REQUEUED for answer in answers)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
