"""``redis-scripts``: where Redis's time per item goes, script by script.

The hot path's three scripts run on batches of echo jobs exactly as the client and worker
send them (the same packing functions, :mod:`queueing.scripts`), on the run's server, with
nothing else running: SUBMIT of a batch, an ``XREADGROUP`` of it, NOTE (a batch of new
entries begins: ``queueing/lua/note.lua``), then FINISH of every item as ``done``. For each
script, from ``INFO commandstats`` deltas around each call:

* its server time per item (``EVALSHA``'s time, which includes what it calls);
* of that, the time of the commands it calls (each command's own time: ``HSET``, ``XADD``...);
* the rest: the Lua around them and each ``redis.call``'s own cost (building the command,
  turning its reply into Lua values), which the commands' times do not include.

Medians over the rounds. Server time here is command execution only; the whole server's CPU
per item (reading and writing sockets, the AOF) is ``echo-client``'s Redis column. The items/s
it reports is items over the three scripts' server time: the most one Redis core could carry
if it did nothing else.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import redis

from bench.harness import Context
from bench.registry import Derived, scenario
from bench.stats import Result
from queueing import scripts
from queueing.keys import Keys, new_job_ids
from queueing.scripts import Finished, Kind, NewJob, SubmitCall

STAGE = "echo.echo"
BATCH = 256
"""Items per call: the echo stage's max_batch_size, the batches ``echo-client`` runs at."""
ROUNDS = (40, 10)
"""Batches (full, --quick)."""
TIMING = (
    b'{"stage":"echo.echo","queue_wait_s":0.0021,"batch_size":256,'
    b'"compute_s":0.000043,"started_at":1796187028.3380914}'
)
"""A stage timing as a worker writes it (its length is what matters)."""
SCRIPTS = ("submit", "note", "finish")


def _command_usec(client: redis.Redis) -> dict[str, int]:
    stats: Any = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["usec"]) for name, s in stats.items()}


def _timed(client: redis.Redis, sha: str, call: scripts.Call) -> tuple[Any, dict[str, int]]:
    """The script's reply, and each command's usec during it (``evalsha``: the script)."""
    keys, args = call
    before = _command_usec(client)
    reply = client.evalsha(sha, len(keys), *keys, *args)
    after = _command_usec(client)
    # (the INFO that took ``before`` is counted by the one that took ``after``: left out)
    spent = {name: usec - before.get(name, 0) for name, usec in after.items() if name != "info"}
    return reply, {name: usec for name, usec in spent.items() if usec}


def _one_round(client: redis.Redis, shas: dict[str, str], keys: Keys) -> dict[str, dict[str, int]]:
    stream, prefix = keys.stream(0, STAGE), keys.job_prefix(0)
    ids = new_job_ids([0] * BATCH)
    jobs = [NewJob(i, prefix + i, b'{"i":%d,"hello":"world"}' % n) for n, i in enumerate(ids)]
    call = SubmitCall(
        stream,
        "echo",
        STAGE,
        repr(time.time()),
        10**9,
        3600,
        keys.notify(0, "bench"),
        groups=[jobs],
    )
    spent = {}
    _, spent["submit"] = _timed(client, shas["submit"], call.pack())
    read: Any = client.xreadgroup(keys.group(STAGE), "bench", {stream: ">"}, count=BATCH)
    entries = read[0][1]
    job_keys = [prefix + fields[b"job"].decode() for _, fields in entries]
    note = scripts.note_call(
        keys.started(0, STAGE),
        [(entry.decode(), key) for (entry, _), key in zip(entries, job_keys, strict=True)],
    )
    started = repr(time.time())
    _, spent["note"] = _timed(client, shas["note"], note)
    items = [
        Finished(entry.decode(), fields[b"job"].decode(), key, Kind.DONE, fields[b"data"], TIMING)
        for (entry, fields), key in zip(entries, job_keys, strict=True)
    ]
    finish = scripts.finish_call(
        stream,
        keys.dead(0, STAGE),
        keys.stats(0),
        keys.started(0, STAGE),
        group=keys.group(STAGE),
        consumer="bench",
        now=repr(time.time()),
        ttl=3600,
        stage=STAGE,
        started=started,
        items=items,
    )
    reply, spent["finish"] = _timed(client, shas["finish"], finish)
    if reply != [1] * BATCH:
        raise RuntimeError(f"FINISH did not end every item: {reply}")
    return spent


@scenario(
    "redis-scripts",
    f"SUBMIT, NOTE and FINISH on batches of {BATCH} echo jobs: server µs per item of each",
    derived=[
        Derived(
            f"{name}: server µs per item{part}",
            ("redis-scripts",),
            lambda r, name=name, key=key: r["redis-scripts"].extra["us_per_item"][name][key],
            unit="µs",
            formula=f"median over batches of {BATCH}: INFO commandstats deltas / items",
        )
        for name in SCRIPTS
        for key, part in (("script", ""), ("commands", " in the commands it calls"))
    ],
)
def redis_scripts(ctx: Context) -> Result:
    namespace = ctx.namespace("redis-scripts")
    keys = Keys(namespace)
    client = ctx.redis()
    rounds = ROUNDS[1] if ctx.quick else ROUNDS[0]
    per_round: list[dict[str, dict[str, int]]] = []
    try:
        shas = {name: client.script_load(getattr(scripts, name.upper())) for name in SCRIPTS}
        client.xgroup_create(keys.stream(0, STAGE), keys.group(STAGE), id="0", mkstream=True)
        for _ in range(rounds):
            per_round.append(_one_round(client, shas, keys))
    finally:
        client.close()
        ctx.forget(namespace)
    summary: dict[str, dict[str, Any]] = {}
    for name in SCRIPTS:
        script = [spent[name]["evalsha"] / BATCH for spent in per_round]
        called = [
            sum(usec for command, usec in spent[name].items() if command != "evalsha") / BATCH
            for spent in per_round
        ]
        commands = sorted({c for spent in per_round for c in spent[name]} - {"evalsha"})
        summary[name] = {
            "script": round(statistics.median(script), 2),
            "commands": round(statistics.median(called), 2),
            "by_command": {
                c: round(statistics.median(s[name].get(c, 0) / BATCH for s in per_round), 2)
                for c in commands
            },
        }
    server_s = sum(spent[name]["evalsha"] for spent in per_round for name in SCRIPTS) / 1e6
    return Result(
        "redis-scripts",
        rounds * BATCH,
        server_s,
        extra={"batch": BATCH, "rounds": rounds, "us_per_item": summary},
    )
