"""An rq worker for the baselines: ``python -m bench.rq_worker QUEUE NAME [--fork]
[--preload]``, on the server named by ``REDIS_URL``.

Without ``--fork`` it is rq's ``SimpleWorker`` (jobs run in the worker process itself; the
same as ``rq worker -w rq.worker.SimpleWorker``). With ``--fork`` it is rq's default
``Worker``, which forks a work horse per job; ``--preload`` builds the model before the work
loop, as rq's performance notes advise ("import heavy modules before forking"), so that each
horse inherits it instead of building it again.
"""

from __future__ import annotations

import argparse
import os

import redis
from rq import Queue, SimpleWorker, Worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rq_worker")
    parser.add_argument("queue")
    parser.add_argument("name")
    parser.add_argument("--fork", action="store_true", help="rq's default forking Worker")
    parser.add_argument("--preload", action="store_true", help="build the MLP before working")
    args = parser.parse_args()
    if args.preload:
        from bench.rq_jobs import load_model

        load_model()
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    queue = Queue(args.queue, connection=connection)
    kind = Worker if args.fork else SimpleWorker
    worker = kind([queue], name=args.name, connection=connection)
    worker.work(logging_level="WARNING")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
