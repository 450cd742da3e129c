"""The consumer of the ``queue-floor`` scenario: the least a Redis-streams worker does per item,
in plain redis-py (no Lua, no guarantees).

``python -m bench.floor_worker --redis-url URL --stream S --group G --count N --ready KEY``

Forever: ``XREADGROUP GROUP G floor COUNT N BLOCK 1000 STREAMS S >``; per entry (fields ``i``:
the item's index, ``r``: the list its result goes to, ``d``: the JSON payload) it decodes the
payload and encodes it again (the echo handler's input and output, as a batchline worker
decodes and encodes them); per batch, one pipeline (not a transaction): ``RPUSH`` of
``b"<i> <json>"`` per result list, ``XACK`` and ``XDEL`` of the batch's entries. Once
connected it sets ``KEY`` to its pid (the bench waits for that). SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson
import redis

BLOCK_MS = 1000


def serve(client: redis.Redis, stream: str, group: str, count: int) -> None:
    while True:
        reply: Any = client.xreadgroup(group, "floor", {stream: ">"}, count=count, block=BLOCK_MS)
        if not reply:
            continue
        entries = reply[0][1]
        ids: list[bytes] = []
        results: dict[bytes, list[bytes]] = {}
        for entry_id, fields in entries:
            ids.append(entry_id)
            output = orjson.dumps(orjson.loads(fields[b"d"]))
            results.setdefault(fields[b"r"], []).append(fields[b"i"] + b" " + output)
        pipe = client.pipeline(transaction=False)
        for key, values in results.items():
            pipe.rpush(key, *values)
        pipe.xack(stream, group, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_worker")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--count", type=int, required=True, help="largest batch (XREADGROUP COUNT)")
    p.add_argument("--ready", required=True, help="key set to this pid once connected")
    args = p.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    client.set(args.ready, os.getpid())
    serve(client, args.stream, args.group, args.count)


if __name__ == "__main__":
    main()
