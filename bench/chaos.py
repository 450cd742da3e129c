"""The chaos suite: fault scenarios against real processes (issue 10).

```
python -m bench.chaos                        # every scenario, N = 10,000 jobs each
python -m bench.chaos --quick                # N = 1,000, shorter timings
python -m bench.chaos worker-sigkill redis-kill --n 5000
```

Every scenario gets its own embedded server (valkey, AOF on, ``appendfsync everysec``, in a
scratch folder), real ``python -m batchline worker chaos`` processes (two, visibility timeout
1 s) serving :mod:`bench.chaos_pipelines`, and one :class:`queueing.Client`. It submits N jobs
(``submit_many`` in chunks, at most ``WINDOW`` unfinished; scenario ``pubsub-kill`` through
``Client.map``) while it injects its fault, then waits until every accepted job has ended or
the drain limit has passed. Per scenario it reports:

- ``accepted``: jobs a submit returned; ``done`` / ``failed`` / ``expired`` / ``cancelled``:
  how they ended; ``lost``: accepted and not ended within the drain limit (must be 0);
- ``executions``: model executions counted by the pipeline (one ``HINCRBY`` per item and
  execution); ``extra exec``: executions beyond the first of each input (a re-run after a
  crash; expected under SIGKILL, no error);
- ``dup results``: results published more than once: the stage's ``done`` counter (counted
  by the script that publishes a result) minus the jobs that ended done (must be 0);
- ``dead``: entries in the stage's dead-letter stream; ``drain s``: first submit to the last
  job's end; ``faults``: faults injected (kills, restarts, connections killed).

JSON goes to ``bench/results/chaos-<date>.json`` (``--out`` to choose). The exit status is 1
if a scenario lost a job, published a result twice, broke its own expectation (named in
``problems``), or could not run.

Scenarios, in this order:

- ``worker-sigkill``: every ``kill_every_s`` (0.5 s) SIGKILL one of the two workers (in turn)
  and start another in its place;
- ``rolling-sigterm``: every ``roll_every_s`` start a new worker, wait until it is ready, then
  SIGTERM the oldest (it must finish its batches and exit 0); no job may run twice;
- ``redis-kill``: SIGKILL the server a few times and restart it on the same data folder, with
  ``BATCHLINE_DURABLE_SUBMIT=1`` in client and workers: every accepted job must end;
- ``pubsub-kill``: ``CLIENT KILL TYPE pubsub`` every 0.2 s during one ``Client.map`` of N
  jobs: the map must complete (every result, in order) within the drain limit;
- ``poison``: 1% of inputs make the model ``os._exit(1)``, against ``batchline worker
  --processes 2`` (its supervisor forks a crashed worker's replacement at once, same name);
  every good job must end done, every poison one failed (dead-lettered). Three runs of N:
  a flood without poison (the baseline rate), a flood with (the good jobs' rate), and poison
  paced at half the baseline rate (the good jobs' p99 from submit to end);
- ``poison-restart``: the same against two plain ``batchline worker`` processes, each dead
  one replaced by a new process (a new interpreter and name), as an outside supervisor would;
- ``map-redis-restart``: one ``Client.map`` of N while the server is stopped for 2 s and
  started again: every result once, in order;
- ``backlog-flood``: N jobs at once against a first-stage limit of 200: refused submits
  (QueueFull; 429 over HTTP) are retried after Retry-After, every accepted job ends;
- ``deadlines``: N jobs at once with a 0.25 s deadline against a slower model: the tail
  expires, and no expired job reaches the model;
- ``backlog-recovery``: N jobs at once against a slower model; a worker holding entries is
  SIGKILLed while the backlog stands: its entries must be re-run within the visibility
  timeout plus two heartbeats;
- ``gateway-kill``: N inputs over HTTP in requests of 50, each with an Idempotency-Key,
  paced over flow_s, while the gateway is SIGKILLed every second and started again on the
  same port; failed requests are sent again with the same key: one job per input;
- ``chain-middle-kill`` / ``fan-branch-kill``: ``chaos_chain`` (first -> middle -> last) or
  ``chaos_fan`` (left and right branches, then join) with one worker per stage and two more
  of the middle stage / left branch, one of which is SIGKILLed every ``kill_every_s``;
- ``memory-soak``: synchronous echo through a gateway (``batchline web``) at C=64 with 2.4 KB
  bodies for 10 minutes (40 s with ``--quick``), the sync results' TTL set to 10 s
  (``BATCHLINE_SYNC_RESULT_TTL_S``; default 60 s): Redis's used_memory must stay within 10% of
  its median from twice the TTL on;
- ``gateway-rss``: synchronous echo of 100 KB inputs at C=16: the gateway's RSS must stay
  under 150 MB.

Each row prints its own ``target`` beyond 0 lost and 0 duplicate results, and whether it was
``met`` (speed targets are measured, not asserted: ``ok`` is about correctness only).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from bench import loadgen
from bench.chaos_pipelines import executions_key
from bench.harness import ROOT, Child, Processes, child_env, machine_info, scratch_dir
from bench.loadgen import Call, LoadResult
from bench.scenarios_http import HOST, wait_until_ready
from bench.stats import percentile
from queueing.client import Client, Job
from queueing.errors import BatchlineError, QueueFull, ResultTimeout, UnknownJob
from queueing.jobs import JobRecord
from queueing.keys import Keys
from queueing.message import job_id_of
from queueing.server import EmbeddedServer, free_port
from queueing.settings import Settings

PIPELINE = "chaos"
STAGE = "chaos.model"
WINDOW = 2000
"""Jobs submitted and not yet ended, at most (the submit loop's window)."""
CHUNK = 50
"""Inputs per submit_many."""
READY_TIMEOUT_S = 60.0
POISON_EVERY = 100
"""One input in this many is poison (scenario ``poison``)."""
REDIS_RESTART_S = 2.0
"""How long the server stays down in scenario ``map-redis-restart``."""
FLOOD_LIMIT = 200
"""The first-stage limit in scenario ``backlog-flood`` (BATCHLINE_MAX_BACKLOG)."""
DEADLINE_S = 0.25
"""Each job's deadline in scenario ``deadlines``."""
SLOW = {"CHAOS_BATCH_SLEEP_S": "0.02"}
"""A slower model (20 ms per batch of up to 32), so that a backlog stands."""
SOAK_CONNECTIONS = 64
SOAK_TTL_S = 10.0
"""The sync results' TTL in scenario ``memory-soak`` (BATCHLINE_SYNC_RESULT_TTL_S; the default
is 60 s): short, so that a short run gets past it."""
SOAK_LASTING_KEYS = 100
"""At most this many keys without a TTL after scenario ``memory-soak`` (a job record without
one would be a leak: there are hundreds of thousands)."""
RSS_LIMIT_MB = 150
JSON = {"Content-Type": "application/json"}
ECHO = {"BATCHLINE_PIPELINES": "pipelines.examples"}


@dataclass(frozen=True)
class Timing:
    """A run's timings (full, or ``--quick``)."""

    n: int
    visibility_timeout_s: float = 1.0
    kill_every_s: float = 0.5
    roll_every_s: float = 1.0
    pubsub_kill_every_s: float = 0.2
    redis_kills: int = 3
    redis_kill_every_s: float = 3.0
    redis_down_s: float = 0.5
    flow_s: float = 20.0
    """Submissions are paced to last this long (N / flow_s jobs per second), so that the
    faults meet jobs in every state; the faults go on until every job has ended."""
    fault_window_s: float = 60.0
    """Faults stop after this long (or when every job has ended)."""
    drain_limit_s: float = 600.0
    """A job not ended this long after the first submit is lost."""
    soak_s: float = 600.0
    """How long scenario ``memory-soak`` loads the gateway."""
    rss_s: float = 60.0
    """How long scenario ``gateway-rss`` loads the gateway."""
    gateway_kill_every_s: float = 1.0

    @classmethod
    def of(cls, quick: bool, n: int | None) -> Timing:
        if quick:
            return cls(
                n=n or 1_000,
                flow_s=5.0,
                roll_every_s=0.7,
                redis_kills=2,
                redis_kill_every_s=1.5,
                fault_window_s=20.0,
                drain_limit_s=90.0,
                soak_s=40.0,
                rss_s=15.0,
            )
        return cls(n=n or 10_000)


@dataclass
class Row:
    """One scenario's outcome (a table row; the JSON holds every field)."""

    scenario: str
    n: int
    accepted: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    lost: int = 0
    executions: int = 0
    extra_executions: int = 0
    duplicate_results: int = 0
    dead_lettered: int = 0
    drain_s: float | None = None
    faults: int = 0
    done_exact: bool = True
    """Whether ``done`` counts every job that ended done (not so for a map that got stuck)."""
    problems: list[str] = field(default_factory=list)
    """Expectations of the scenario that were not met (beyond lost and duplicate results)."""
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the scenario could not run to its end."""
    target: str = "0 lost, 0 dup"
    """The scenario's own target beyond 0 lost and 0 duplicate results (printed)."""
    met: bool | None = None
    """Whether ``target`` was met (None: nothing measured beyond lost and duplicates)."""

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.lost == 0
            and self.duplicate_results == 0
            and not self.problems
        )


# -- a scenario's lab: server, workers, client settings -----------------------------------------


class Lab:
    """One scenario's server (in its own folder), worker processes and settings."""

    def __init__(
        self, workdir: Path, processes: Processes, timing: Timing, env: dict[str, str]
    ) -> None:
        self.workdir = workdir
        self.processes = processes
        self.timing = timing
        self.server = EmbeddedServer(workdir / "redis")
        self.extra_env = env
        self.workers: list[Child] = []
        self.job_ids: list[str] = []
        """The accepted jobs (submit_and_drain's)."""
        self.started = 0
        self.lock = threading.Lock()
        self.stages = [STAGE]
        """The stages of the pipeline under test (their dead letters are counted)."""
        self.final_stage = STAGE
        """The stage that publishes results (its ``done`` counter counts them)."""

    def __enter__(self) -> Lab:
        self.start_server()
        return self

    def __exit__(self, *exc: object) -> None:
        for child in list(self.workers):
            self.processes.stop(child)
        self.workers.clear()
        self.server.stop()

    def start_server(self) -> None:
        self.server.start()
        assert self.server.process is not None
        self.processes.watch(self.server.process.pid)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def settings(self) -> Settings:
        return Settings(
            redis_url=self.url,
            prefix="chaos",
            visibility_timeout_s=self.timing.visibility_timeout_s,
            durable_submit=self.extra_env.get("BATCHLINE_DURABLE_SUBMIT") == "1",
            max_backlog=int(self.extra_env.get("BATCHLINE_MAX_BACKLOG") or 100_000),
        )

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def worker_env(self) -> dict[str, str]:
        return child_env(
            {
                "REDIS_URL": self.url,
                "BATCHLINE_REDIS_URL": self.url,
                "BATCHLINE_PREFIX": self.settings.prefix,
                "BATCHLINE_PIPELINES": "bench.chaos_pipelines",
                "BATCHLINE_DEVICE": "cpu",
                "BATCHLINE_VISIBILITY_TIMEOUT_S": str(self.timing.visibility_timeout_s),
                "BATCHLINE_BLOCK_MS": "200",
                **self.extra_env,
            }
        )

    def start_worker(self, processes: int | None = None, target: str = PIPELINE) -> Child:
        """A ``batchline worker chaos`` process (not waited for); with ``processes``, a
        supervisor of that many (``--processes``)."""
        argv = [sys.executable, "-m", "batchline", "--log-level", "WARNING", "worker", target]
        if processes:
            argv += ["--processes", str(processes)]
        with self.lock:
            self.started += 1
            child = self.processes.start(f"worker{self.started}", argv, self.worker_env())
            self.workers.append(child)
        return child

    def wait_ready(self, *children: Child) -> None:
        """Until each of ``children`` has announced itself (its heartbeat names its pid)."""
        client = self.redis()
        key = Keys(self.settings.prefix).worker_info
        limit = time.monotonic() + READY_TIMEOUT_S
        waiting = {child.pid: child for child in children}
        try:
            while waiting:
                with contextlib.suppress(redis.exceptions.RedisError):
                    for raw in client.hvals(key):
                        with contextlib.suppress(ValueError, TypeError, AttributeError):
                            waiting.pop(int(json.loads(raw).get("pid")), None)
                for child in list(waiting.values()):
                    if not child.alive():
                        raise BatchlineError(
                            f"{child.name} exited with {child.process.returncode} at start:\n"
                            f"{child.log_tail()}"
                        )
                if waiting and time.monotonic() > limit:
                    raise BatchlineError(f"a worker was not ready in {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def wait_workers(self, n: int) -> None:
        """Until ``n`` workers have announced themselves (a supervisor's children)."""
        client = self.redis()
        key = Keys(self.settings.prefix).worker_info
        limit = time.monotonic() + READY_TIMEOUT_S
        try:
            while True:
                with contextlib.suppress(redis.exceptions.RedisError):
                    if client.hlen(key) >= n:
                        return
                if time.monotonic() > limit:
                    raise BatchlineError(f"{n} workers were not ready in {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self, child: Child) -> None:
        """SIGKILL a worker (and forget it)."""
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        child.process.wait()
        self.forget(child)

    def forget(self, child: Child) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self.workers.remove(child)
        self.processes.stop(child)

    # -- what Redis says once it is over --------------------------------------------------------

    def stop_workers(self) -> None:
        """SIGTERM every worker (each finishes its batches), so that the counts hold still."""
        for child in list(self.workers):
            self.forget(child)

    def done_now(self) -> int:
        """How many of the accepted jobs (``job_ids``) have ended done."""
        done = 0
        with Client(self.settings) as client:
            for at in range(0, len(self.job_ids), 1000):
                ended = client.recheck(self.job_ids[at : at + 1000])
                done += sum(1 for snapshot in ended if snapshot.status.value == "done")
        return done

    def tally(self, row: Row) -> None:
        """Executions, duplicate results and dead letters, from Redis."""
        keys = Keys(self.settings.prefix)
        client = self.redis()
        try:
            counts = [int(v) for v in client.hvals(executions_key(self.settings.prefix))]
            row.executions = sum(counts)
            row.extra_executions = sum(c - 1 for c in counts if c > 1)
            published = 0
            for partition in range(self.settings.partitions):
                stats = keys.stats(partition)
                published += int(client.hget(stats, f"{self.final_stage}:done") or 0)
                for stage in self.stages:
                    row.dead_lettered += int(client.xlen(keys.dead(partition, stage)) or 0)
            # Jobs may have ended after the drain limit: count the done ones now (after the
            # counter, so that one ending in between cannot look like a duplicate). A map that
            # never finished does not say which jobs ended: then only more results than jobs
            # is known to be a duplicate.
            if self.job_ids:
                ended = self.done_now()
            else:
                ended = row.done if row.done_exact else row.accepted
            row.duplicate_results = max(0, published - ended)
            if published < row.done:
                row.problems.append(f"{row.done} jobs done but {published} results counted")
        finally:
            client.close()


# -- faults ---------------------------------------------------------------------------------

Fault = Callable[[Lab, threading.Event, Row], None]
"""Injects a fault until the event is set; counts what it did in ``row.faults``."""


def _every(stop: threading.Event, period: float) -> Iterator[int]:
    """0, 1, 2, ... once per ``period`` seconds until ``stop`` is set."""
    i = 0
    while not stop.wait(period):
        yield i
        i += 1


def kill_workers(lab: Lab, stop: threading.Event, row: Row) -> None:
    """SIGKILL the oldest worker every ``kill_every_s`` and start another in its place."""
    for _ in _every(stop, lab.timing.kill_every_s):
        with lab.lock:
            victim = lab.workers[0] if lab.workers else None
        if victim is not None:
            lab.kill(victim)
            row.faults += 1
        lab.start_worker()
    # leave two live workers for the drain
    with lab.lock:
        live = [child for child in lab.workers if child.alive()]
    for child in live[:-2]:
        lab.forget(child)


def roll_workers(lab: Lab, stop: threading.Event, row: Row) -> None:
    """Start a worker, wait until it is ready, SIGTERM the oldest; it must exit 0."""
    for _ in _every(stop, lab.timing.roll_every_s):
        with lab.lock:
            oldest = lab.workers[0] if lab.workers else None
        fresh = lab.start_worker()
        lab.wait_ready(fresh)
        if oldest is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            oldest.process.send_signal(signal.SIGTERM)
        try:
            code = oldest.process.wait(30)
        except Exception:
            code = None
        row.faults += 1
        if code != 0:
            row.problems.append(f"{oldest.name} exited with {code} after SIGTERM")
        lab.forget(oldest)


def kill_redis(lab: Lab, stop: threading.Event, row: Row) -> None:
    """SIGKILL the server ``redis_kills`` times and restart it on the same data folder."""
    for i in _every(stop, lab.timing.redis_kill_every_s):
        if i >= lab.timing.redis_kills:
            return
        lab.server.kill()
        row.faults += 1
        time.sleep(lab.timing.redis_down_s)
        lab.start_server()


def kill_pubsub(lab: Lab, stop: threading.Event, row: Row) -> None:
    """``CLIENT KILL TYPE pubsub`` (every subscriber, the client's listener among them)."""
    client = lab.redis()
    try:
        for _ in _every(stop, lab.timing.pubsub_kill_every_s):
            with contextlib.suppress(redis.exceptions.RedisError):
                row.faults += int(client.client_kill_filter(_type="pubsub") or 0)
    finally:
        client.close()


def restart_redis_once(lab: Lab, stop: threading.Event, row: Row) -> None:
    """A third of the way through the flow, stop the server (SIGTERM: it fsyncs its AOF),
    wait REDIS_RESTART_S, start it again on the same data folder."""
    if stop.wait(lab.timing.flow_s / 3):
        return
    lab.server.stop()
    row.faults += 1
    time.sleep(REDIS_RESTART_S)
    lab.start_server()


def kill_one_holding(killed: dict[str, Any]) -> Fault:
    """A fault that SIGKILLs the first worker once it holds entries and the backlog stands;
    ``killed`` gets the time (``at``), the held jobs' ids and the backlog then."""

    def fault(lab: Lab, stop: threading.Event, row: Row) -> None:
        client = lab.redis()
        keys = Keys(lab.settings.prefix)
        stream = keys.stream(0, STAGE)
        try:
            victim = lab.workers[0]
            name = f"{socket.gethostname()}-{victim.pid}"
            while not stop.wait(0.05):
                held = client.xpending_range(stream, STAGE, "-", "+", 10_000, consumername=name)
                backlog = int(client.xlen(stream))
                if held and backlog > 4 * len(held):
                    break
            else:
                return
            lab.kill(victim)
            killed["at"] = time.time()
            row.faults += 1
            killed["backlog"] = backlog
            ids = [p["message_id"] for p in held]
            found = [job_id_of(f) for e in ids for _, f in client.xrange(stream, e, e)]
            killed["job_ids"] = [job_id for job_id in found if job_id]
            lab.start_worker()  # (two live workers again for the rest)
        finally:
            client.close()

    return fault


def restart_dead_workers(lab: Lab, stop: threading.Event, row: Row) -> None:
    """Start a worker in the place of each one that died (poison ends them)."""
    while not stop.wait(0.1):
        with lab.lock:
            dead = [child for child in lab.workers if not child.alive()]
        for child in dead:
            lab.forget(child)
            row.faults += 1
            lab.start_worker()


@contextlib.contextmanager
def injecting(fault: Fault, lab: Lab, row: Row) -> Iterator[threading.Event]:
    """Run ``fault`` in a thread for the block (or until the event it yields is set)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fault(lab, stop, row)
        except BaseException as exc:  # reported with the row
            errors.append(exc)

    thread = threading.Thread(target=run, name="chaos-fault", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        if errors:
            row.notes.append(f"fault thread: {errors[0]!r}")


# -- load -----------------------------------------------------------------------------------


def inputs(n: int, poison: bool = False, first: int = 0) -> list[dict[str, Any]]:
    """``{"i": i}`` for i in first .. first + n - 1; with ``poison``, one in POISON_EVERY is
    ``{"i": i, "poison": true}``."""
    return [
        {"i": i, "poison": True} if poison and i % POISON_EVERY == POISON_EVERY // 2 else {"i": i}
        for i in range(first, first + n)
    ]


def paced(items: Sequence[dict[str, Any]], flow_s: float) -> Iterator[dict[str, Any]]:
    """``items``, spread over ``flow_s`` seconds."""
    start = time.monotonic()
    for k, item in enumerate(items):
        pause = start + flow_s * k / max(1, len(items)) - time.monotonic()
        if pause > 0.005:
            time.sleep(pause)
        yield item


def submit_and_drain(
    lab: Lab,
    row: Row,
    items: Sequence[dict[str, Any]],
    stop_faults: threading.Event,
    *,
    flow_s: float | None = None,
    window: int = WINDOW,
    times: dict[int, tuple[float, float]] | None = None,
    timeout_s: float | None = None,
    pipeline: str = PIPELINE,
) -> dict[int, str]:
    """Submit ``items`` over ``flow_s`` seconds (the timing's by default; at most ``window``
    unfinished), wait for every accepted job to end; the counts are added to ``row``'s.
    Returns each accepted input's final status by ``i``; ``times`` gets each ended job's
    (created_at, finished_at), from its record. ``timeout_s``: each job's deadline from its
    submit. A submit refused with QueueFull is counted in ``row.faults`` and retried after its
    Retry-After (any other refusal is noted and skipped)."""
    timing = lab.timing
    flow_s = timing.flow_s if flow_s is None else flow_s
    start = time.monotonic()
    drain_limit = start + timing.drain_limit_s
    fault_end = start + timing.fault_window_s
    statuses: dict[int, str] = {}
    in_flight: list[tuple[int, Job]] = []
    head = 0
    last_end = start
    missing: list[int] = []
    with Client(lab.settings) as client:

        def settle(item: tuple[int, Job], until: float) -> bool:
            nonlocal last_end
            if time.monotonic() > fault_end:
                stop_faults.set()
            i, job = item
            try:
                record = job.wait(timeout=max(0.01, until - time.monotonic()))
            except ResultTimeout:
                return False
            except UnknownJob:  # its record is gone: lost
                missing.append(i)
                return True
            statuses[i] = record.status.value
            if times is not None and record.finished_at is not None:
                times[i] = (record.created_at, record.finished_at)
            last_end = time.monotonic()
            return True

        submitted = 0
        interval = flow_s * CHUNK / max(1, len(items))
        while submitted < len(items):
            pause = start + interval * (submitted // CHUNK) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if len(in_flight) - head >= window:
                if not settle(in_flight[head], min(drain_limit, time.monotonic() + 5)):
                    if time.monotonic() > drain_limit:
                        break
                    continue
                head += 1
                continue
            chunk = list(items[submitted : submitted + CHUNK])
            try:
                jobs = client.submit_many(pipeline, chunk, timeout_s=timeout_s)
            except QueueFull as exc:
                row.faults += 1
                time.sleep(min(exc.retry_after, 0.1))
                continue
            except BatchlineError as exc:
                row.notes.append(f"submit of {len(chunk)} refused: {exc!r}")
                submitted += len(chunk)
                continue
            in_flight += [(item["i"], job) for item, job in zip(chunk, jobs, strict=True)]
            submitted += len(chunk)
        row.accepted += len(in_flight)
        lab.job_ids += [job.id for _, job in in_flight]
        while head < len(in_flight) and time.monotonic() < drain_limit:
            # (briefly: settle stops the faults once their window has passed, and a wait for
            # one job must not keep them going: kills every 0.5 s outpace workers that take
            # longer than that to start on a loaded machine)
            began = time.monotonic()
            if settle(in_flight[head], min(drain_limit, began + 0.25)):
                head += 1
                if time.monotonic() - began < 0.2:
                    continue
            # A slow wait: the jobs whose notices were lost while the listener reconnected
            # would each cost one (up to RECHECK_S, then a read of its record, in Job.ended);
            # read the records of the rest at once.
            ended: dict[str, JobRecord] = {}
            for at in range(head, len(in_flight), 1000):
                ids = [job.id for _, job in in_flight[at : at + 1000]]
                ended.update((s.job_id, s.record()) for s in client.recheck(ids))
            if ended:
                last_end = time.monotonic()
            for i, job in in_flight[head:]:
                record = ended.get(job.id)
                if record is not None:
                    statuses[i] = record.status.value
                    if times is not None and record.finished_at is not None:
                        times[i] = (record.created_at, record.finished_at)
            while head < len(in_flight) and in_flight[head][0] in statuses:
                head += 1
        stop_faults.set()
        rest = in_flight[head:]
        if rest:  # those that ended meanwhile, out of order
            by_id = {job.id: i for i, job in rest}
            for start_at in range(0, len(rest), 1000):
                ids = [job.id for _, job in rest[start_at : start_at + 1000]]
                for snapshot in client.recheck(ids):
                    statuses[by_id[snapshot.job_id]] = snapshot.status.value
    if missing:
        row.notes.append(f"{len(missing)} accepted jobs have no record (e.g. i={missing[0]})")
    counts = Counter(statuses.values())
    row.done += counts["done"]
    row.failed += counts["failed"]
    row.expired += counts["expired"]
    row.cancelled += counts["cancelled"]
    row.lost += len(in_flight) - len(statuses)
    row.drain_s = round(last_end - start, 2) if not row.lost else None
    return statuses


# -- scenarios ------------------------------------------------------------------------------


def _two_workers(lab: Lab) -> None:
    lab.wait_ready(lab.start_worker(), lab.start_worker())


def worker_sigkill(lab: Lab, row: Row) -> None:
    _two_workers(lab)
    with injecting(kill_workers, lab, row) as stop:
        submit_and_drain(lab, row, inputs(row.n), stop)


def rolling_sigterm(lab: Lab, row: Row) -> None:
    _two_workers(lab)
    with injecting(roll_workers, lab, row) as stop:
        submit_and_drain(lab, row, inputs(row.n), stop)
    # (run_scenario checks, once Redis has been read, that no job ran twice)


def redis_kill(lab: Lab, row: Row) -> None:
    _two_workers(lab)
    with injecting(kill_redis, lab, row) as stop:
        submit_and_drain(lab, row, inputs(row.n), stop)
    row.notes.append(
        "executions are counted with appendfsync everysec: a crash may drop the last second's"
    )


def pubsub_kill(lab: Lab, row: Row) -> None:
    row.target = "0 stuck waits: map completes in order"
    _map_under(lab, row, kill_pubsub)


def map_redis_restart(lab: Lab, row: Row) -> None:
    row.target = f"map completes across a {REDIS_RESTART_S:g}s restart"
    _map_under(lab, row, restart_redis_once)


def _map_under(lab: Lab, row: Row, fault: Fault) -> None:
    """One ``Client.map`` of N inputs (paced over flow_s) while ``fault`` is injected: it
    must complete, with every result once, in input order."""
    _two_workers(lab)
    timing = lab.timing
    results: list[Any] = []
    failure: list[BaseException] = []
    finished = threading.Event()

    def run_map() -> None:
        try:
            with Client(lab.settings) as client:
                for result in client.map(PIPELINE, paced(inputs(row.n), timing.flow_s)):
                    results.append(result)
        except BaseException as exc:
            failure.append(exc)
        finally:
            finished.set()

    start = time.monotonic()
    with injecting(fault, lab, row) as stop:
        thread = threading.Thread(target=run_map, name="chaos-map", daemon=True)
        thread.start()
        finished.wait(timing.drain_limit_s)
        stop.set()
    elapsed = time.monotonic() - start
    row.accepted = row.n  # map submits every input before it can end
    row.done = len(results)
    if failure:
        row.error = f"Client.map raised {failure[0]!r}"
    elif not finished.is_set():
        row.lost = row.n - len(results)
        row.done_exact = False
        row.problems.append(f"Client.map was stuck after {len(results)} results")
    else:
        row.drain_s = round(elapsed, 2)
        if [r.get("i") for r in results] != list(range(row.n)):
            row.problems.append("Client.map's results are not every input once, in order")
    row.met = finished.is_set() and not failure and not row.problems


def memory_soak(lab: Lab, row: Row) -> None:
    """Synchronous echo calls through a gateway at C=64 with 2.4 KB bodies for soak_s; Redis's
    used_memory and the jobs done so far are sampled every second. used_memory follows the
    request rate (it holds the records of the jobs that ended within the TTL: SOAK_TTL_S, set
    short with BATCHLINE_SYNC_RESULT_TTL_S so that a short run gets past it), and the rate
    swings on a shared machine, so flat means: from twice the TTL on, the memory per job ended
    within the last TTL stays within 10% of its median (a record kept past its TTL, or one that
    grows, would push it up), and no job record is left without a TTL. The raw band of
    used_memory is printed beside."""
    timing = lab.timing
    body = orjson.dumps({"input": {"text": "m" * 2400}})
    samples = _gateway_load(lab, row, body, SOAK_CONNECTIONS, timing.soak_s, sample_redis=True)
    lasting = _keys_without_ttl(lab)
    settle = SOAK_TTL_S * 2
    base = samples[0][1] if samples else 0
    done_at = [(at, done) for at, _, done in samples]
    per_job: list[float] = []
    for at, used, done in samples:
        before = [d for t, d in done_at if t <= at - SOAK_TTL_S]
        held = done - before[-1] if before else 0
        if at >= settle and held > 0:
            per_job.append((used - base) / held)
    row.target = "redis flat within 10% past TTLs"
    if not per_job:
        row.notes.append(f"the run ({timing.soak_s:g}s) did not get past the TTLs ({settle:g}s)")
        row.met = False
        return
    per_job.sort()
    median_per_job = percentile(per_job, 50)
    used_sorted = sorted(used for at, used, _ in samples if at >= settle)
    median = percentile(used_sorted, 50)
    row.met = (
        per_job[0] >= median_per_job * 0.9
        and per_job[-1] <= median_per_job * 1.1
        and len(lasting) <= SOAK_LASTING_KEYS
    )
    row.notes.append(
        f"redis used_memory {base / 1e6:.1f} MB at start, {samples[-1][1] / 1e6:.1f} MB at the "
        f"end; since {settle:g}s (twice the {SOAK_TTL_S:g}s TTL): memory per job ended within "
        f"the TTL {median_per_job / 1e3:.2f} KB ({per_job[0] / median_per_job - 1:+.1%} to "
        f"{per_job[-1] / median_per_job - 1:+.1%}); used_memory median {median / 1e6:.1f} MB "
        f"({used_sorted[0] / median - 1:+.1%} to {used_sorted[-1] / median - 1:+.1%}: the "
        f"rate's swings); {len(lasting)} keys without a TTL at the end "
        f"({', '.join(sorted(lasting)[:5])}{', ...' if len(lasting) > 5 else ''})"
    )


def _jobs_done(lab: Lab, client: redis.Redis) -> int:
    """Jobs the ``echo`` stage has ended done, over every partition (its stats counters)."""
    keys = Keys(lab.settings.prefix)
    counts = client.pipeline(transaction=False)
    for partition in range(lab.settings.partitions):
        counts.hget(keys.stats(partition), "echo.echo:done")
    return sum(int(n or 0) for n in counts.execute())


def _keys_without_ttl(lab: Lab) -> list[str]:
    """The keys that never expire (streams, the registry, counters; never job records)."""
    client = lab.redis()
    try:
        names = list(client.scan_iter(count=1000))
        ttls = client.pipeline(transaction=False)
        for name in names:
            ttls.ttl(name)
        return [
            name.decode() if isinstance(name, bytes) else str(name)
            for name, ttl in zip(names, ttls.execute(), strict=True)
            if ttl == -1
        ]
    finally:
        client.close()


def gateway_rss(lab: Lab, row: Row) -> None:
    """Synchronous echo calls with 100 KB bodies (and results) at C=16 for rss_s; the
    gateway's RSS, sampled every second, must stay under RSS_LIMIT_MB."""
    body = orjson.dumps({"input": {"text": "g" * 100_000}})
    rss: list[float] = []
    _gateway_load(lab, row, body, 16, lab.timing.rss_s, rss=rss)
    top = max(rss, default=math.nan)
    row.target = f"gateway RSS < {RSS_LIMIT_MB} MB"
    row.met = top < RSS_LIMIT_MB
    row.notes.append(
        f"gateway RSS {rss[0] if rss else math.nan:.0f} MB at start, {top:.0f} MB at most, "
        f"{rss[-1] if rss else math.nan:.0f} MB at the end"
    )


def _gateway_load(
    lab: Lab,
    row: Row,
    body: bytes,
    connections: int,
    seconds: float,
    *,
    sample_redis: bool = False,
    rss: list[float] | None = None,
) -> list[tuple[float, int, int]]:
    """One ``echo`` worker, one gateway (``batchline web``), ``connections`` closed loops of
    ``POST /v1/pipelines/echo`` with ``body`` for ``seconds``; every second, Redis's
    used_memory (returned, by seconds since the start) and the gateway's RSS in MB (``rss``).
    Counts the answers in ``row``."""
    lab.wait_ready(lab.start_worker(target="echo"))
    port = free_port()
    env = {**lab.worker_env(), "BATCHLINE_SYNC_RESULT_TTL_S": str(SOAK_TTL_S)}
    argv = [sys.executable, "-m", "batchline", "--log-level", "WARNING", "web"]
    web = lab.processes.start("gateway", [*argv, "--host", HOST, "--port", str(port)], env)
    base = f"http://{HOST}:{port}"
    try:
        wait_until_ready(web, base + "/readyz", lambda status, _: status == 200)
        shape = Call("POST", "/v1/pipelines/echo", body, expect='"done"', headers=JSON)
        result: list[LoadResult] = []
        loader = threading.Thread(
            target=lambda: result.append(
                loadgen.run(base, shape, connections, seconds, on_start=lab.processes.watch)
            ),
            daemon=True,
        )
        client = lab.redis()
        samples: list[tuple[float, int, int]] = []
        start = time.monotonic()
        loader.start()
        try:
            while loader.is_alive():
                if sample_redis:
                    used = int(client.info("memory")["used_memory"])
                    samples.append((time.monotonic() - start, used, _jobs_done(lab, client)))
                if rss is not None:
                    rss.append(_rss_mb(web.pid))
                loader.join(1.0)
        finally:
            client.close()
        if not result:
            raise BatchlineError("the load generator failed")
        load = result[0]
        row.accepted = row.done = load.ok
        row.failed = load.errors
        row.drain_s = round(load.seconds, 2)
        row.notes.append(
            f"{load.ok_per_s:.0f} calls/s, {load.errors} errors {load.statuses or ''}".strip()
        )
        return samples
    finally:
        lab.forget(web)


def _rss_mb(pid: int) -> float:
    """A process's resident set, in MB (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def gateway_kill(lab: Lab, row: Row) -> None:
    """N inputs submitted over HTTP in requests of CHUNK, each with its own Idempotency-Key,
    while the gateway is SIGKILLed every gateway_kill_every_s and started again on the same
    port; a request that fails (connection error, 503) is sent again with the same key. Each
    input must name one job whatever the retries, and every job must end done once."""
    _two_workers(lab)
    port = free_port()
    base = f"http://{HOST}:{port}"
    gateway = [_start_gateway(lab, port)]

    def kill(lab: Lab, stop: threading.Event, row: Row) -> None:
        for _ in _every(stop, lab.timing.gateway_kill_every_s):
            lab.kill(gateway[0])
            row.faults += 1
            gateway[0] = _start_gateway(lab, port)

    named: dict[int, set[str]] = {}
    retries = 0
    items = inputs(row.n)
    start = time.monotonic()
    with injecting(kill, lab, row) as stop, httpx.Client(base_url=base, timeout=10) as http:
        for at in range(0, len(items), CHUNK):
            pause = start + lab.timing.flow_s * at / len(items) - time.monotonic()
            if pause > 0:  # (paced over flow_s, so that the kills meet requests)
                time.sleep(pause)
            chunk = items[at : at + CHUNK]
            headers = {**JSON, "Idempotency-Key": f"chaos-{at}"}
            while True:
                try:
                    answer = http.post(
                        f"/v1/pipelines/{PIPELINE}/jobs", json={"inputs": chunk}, headers=headers
                    )
                except httpx.HTTPError:
                    answer = None
                if answer is not None and answer.status_code == 202:
                    break
                if answer is not None and answer.status_code not in (429, 502, 503):
                    row.problems.append(f"a submit answered {answer.status_code}")
                    break
                retries += 1
                time.sleep(0.05)
            if answer is not None and answer.status_code == 202:
                for item, doc in zip(chunk, answer.json(), strict=True):
                    named.setdefault(item["i"], set()).add(doc["id"])
        stop.set()
    twice = [i for i, ids in named.items() if len(ids) > 1]
    if twice:
        row.problems.append(f"{len(twice)} inputs got two jobs across retries (e.g. i={twice[0]})")
    lab.job_ids = sorted({job_id for ids in named.values() for job_id in ids})
    row.accepted = len(named)
    ended = _wait_ended(lab, lab.job_ids, start + lab.timing.drain_limit_s)
    counts = Counter(ended.values())
    row.done, row.failed = counts["done"], counts["failed"]
    row.expired, row.cancelled = counts["expired"], counts["cancelled"]
    row.lost = len(lab.job_ids) - len(ended)
    row.drain_s = round(time.monotonic() - start, 2) if not row.lost else None
    row.target = "one job per input across retries"
    row.met = not twice and row.done == row.n
    row.notes.append(f"{retries} submits sent again after a kill")


def _start_gateway(lab: Lab, port: int) -> Child:
    """``batchline web`` on ``port``, waited for (its /readyz answers 200)."""
    argv = [sys.executable, "-m", "batchline", "--log-level", "WARNING", "web"]
    child = lab.processes.start(
        "gateway", [*argv, "--host", HOST, "--port", str(port)], lab.worker_env()
    )
    wait_until_ready(child, f"http://{HOST}:{port}/readyz", lambda status, _: status == 200)
    return child


def _wait_ended(lab: Lab, job_ids: Sequence[str], limit: float) -> dict[str, str]:
    """The final status of each job of ``job_ids`` that ends before ``limit`` (monotonic)."""
    ended: dict[str, str] = {}
    with Client(lab.settings) as client:
        while len(ended) < len(job_ids) and time.monotonic() < limit:
            waiting = [job_id for job_id in job_ids if job_id not in ended]
            for at in range(0, len(waiting), 1000):
                for snapshot in client.recheck(waiting[at : at + 1000]):
                    ended[snapshot.job_id] = snapshot.status.value
            if len(ended) < len(job_ids):
                time.sleep(0.2)
    return ended


def chain_middle_kill(lab: Lab, row: Row) -> None:
    """``chaos_chain`` (first -> middle -> last): the middle stage's workers are SIGKILLed."""
    _stage_kill(lab, row, "chaos_chain", ["first", "middle", "last"], "middle", "last")


def fan_branch_kill(lab: Lab, row: Row) -> None:
    """``chaos_fan`` (left and right, then join): the left branch's workers are SIGKILLed."""
    _stage_kill(lab, row, "chaos_fan", ["split", "left", "right", "join"], "left", "join")


def _stage_kill(
    lab: Lab, row: Row, pipeline: str, stages: list[str], victim: str, final: str
) -> None:
    """One worker of every stage of ``pipeline`` and two more of its ``victim`` stage; every
    kill_every_s the oldest of the victim stage's own workers is SIGKILLed and another
    started. Every job must end done, its result published once by the ``final`` stage."""
    lab.stages = [f"{pipeline}.{stage}" for stage in stages]
    lab.final_stage = f"{pipeline}.{final}"
    target = f"{pipeline}.{victim}"
    everything = lab.start_worker(target=pipeline)
    victims = [lab.start_worker(target=target) for _ in range(2)]
    lab.wait_ready(everything, *victims)

    def kill(lab: Lab, stop: threading.Event, row: Row) -> None:
        for _ in _every(stop, lab.timing.kill_every_s):
            lab.kill(victims.pop(0))
            row.faults += 1
            victims.append(lab.start_worker(target=target))

    with injecting(kill, lab, row) as stop:
        submit_and_drain(lab, row, inputs(row.n), stop, pipeline=pipeline)
    row.target = f"every job done despite {victim} kills"
    row.met = row.done == row.accepted


def backlog_flood(lab: Lab, row: Row) -> None:
    """N jobs at once against a first-stage limit (BATCHLINE_MAX_BACKLOG, FLOOD_LIMIT): the
    submits past it are refused (QueueFull; 429 over HTTP) and retried after Retry-After;
    every accepted job ends."""
    _two_workers(lab)
    submit_and_drain(lab, row, inputs(row.n), threading.Event(), flow_s=0.0, window=row.n)
    row.target = f"refused past {FLOOD_LIMIT} queued, all end"
    row.met = row.faults > 0 and row.accepted == row.n and row.done == row.n
    row.notes.append(f"{row.faults} submits refused with QueueFull (then retried)")


def deadlines(lab: Lab, row: Row) -> None:
    """N jobs at once, each with a DEADLINE_S deadline, against a slower model (20 ms per
    batch): the tail of the backlog expires. Every job ends done or expired, and no expired
    job reached the model."""
    _two_workers(lab)
    statuses = submit_and_drain(
        lab, row, inputs(row.n), threading.Event(), flow_s=0.0, window=row.n, timeout_s=DEADLINE_S
    )
    client = lab.redis()
    try:
        ran = {int(i) for i in client.hkeys(executions_key(lab.settings.prefix))}
    finally:
        client.close()
    expired_ran = sorted(i for i, s in statuses.items() if s == "expired" and i in ran)
    if expired_ran:
        row.problems.append(f"{len(expired_ran)} expired jobs ran (e.g. i={expired_ran[0]})")
    row.target = "expired jobs never ran"
    row.met = row.expired > 0 and not expired_ran
    if not row.expired:
        row.notes.append("no job expired: the deadline was not put to the test")


def backlog_recovery(lab: Lab, row: Row) -> None:
    """N jobs at once against a slower model (40 ms per batch), so that a backlog stands; a
    worker that holds entries is SIGKILLed: the entries it held must be re-run within the
    visibility timeout plus two heartbeats, while the backlog still stands."""
    _two_workers(lab)
    killed: dict[str, Any] = {}
    with injecting(kill_one_holding(killed), lab, row):
        submit_and_drain(lab, row, inputs(row.n), threading.Event(), flow_s=0.0, window=row.n)
    vt = lab.timing.visibility_timeout_s
    limit = vt + 2 * vt / 3
    row.target = f"orphans re-run <= {limit:.2f}s (vt + 2 beats)"
    if not killed.get("job_ids"):
        row.notes.append("no worker was killed while it held entries")
        row.met = False
        return
    with Client(lab.settings) as client:
        ended = [s.record() for s in client.recheck(killed["job_ids"])]
    last = max((r.finished_at or math.inf) for r in ended) - killed["at"]
    row.met = last <= limit
    row.notes.append(
        f"{len(ended)} entries of the killed worker re-run {last:.2f}s after the kill, with "
        f"{killed['backlog']} entries queued at the kill"
    )


def poison(lab: Lab, row: Row) -> None:
    """Poison against ``batchline worker --processes 2``: its supervisor forks a crashed
    worker's replacement at once, under the same name."""
    supervisor = lab.start_worker(processes=2)
    lab.wait_workers(2)
    poisons = _poison(lab, row, contextlib.nullcontext())
    lab.forget(supervisor)  # (SIGTERM: its log is complete)
    row.faults = supervisor.log_path.read_text(errors="replace").count("restarting it")
    row.notes.append(f"{row.faults / max(poisons, 1):.2f} worker crashes per poison input")


def poison_restart(lab: Lab, row: Row) -> None:
    """Poison against two ``batchline worker`` processes, each crashed one replaced by a new
    process (a new interpreter, a new name) as an outside supervisor would."""
    _two_workers(lab)
    poisons = _poison(lab, row, injecting(restart_dead_workers, lab, row))
    row.notes.append(f"{row.faults / max(poisons, 1):.2f} worker crashes per poison input")


def _poison(lab: Lab, row: Row, restarts: contextlib.AbstractContextManager[Any]) -> int:
    """Three runs of N jobs while crashed workers are restarted: a flood of good inputs (the
    baseline rate), a flood with 1% poison (the good jobs' rate), and 1% poison paced at half
    the baseline rate (the good jobs' p99 from submit to end). Returns how many inputs were
    poison."""
    n, vt = row.n, lab.timing.visibility_timeout_s
    bad: set[int] = set()
    ended: dict[int, str] = {}

    def flow(first: int, poisoned: bool, flow_s: float) -> dict[int, tuple[float, float]]:
        items = inputs(n, poison=poisoned, first=first)
        bad.update(item["i"] for item in items if item.get("poison"))
        times: dict[int, tuple[float, float]] = {}
        ended.update(
            submit_and_drain(
                lab, row, items, threading.Event(), flow_s=flow_s, window=n, times=times
            )
        )
        return {i: t for i, t in times.items() if i not in bad}

    with restarts:  # (crashed workers are restarted until the end, not just a fault window)
        base = _rate(flow(0, False, 0.0))
        rate = _rate(flow(n, True, 0.0))
        paced = flow(2 * n, True, n / (base / 2))
    p99 = percentile(sorted(end - start for start, end in paced.values()), 99)
    row.target = f"good >= 50% of baseline/s, p99 <= {3 * vt:g}s"
    row.met = rate >= base / 2 and p99 <= 3 * vt
    row.notes.append(
        f"good jobs {rate:.0f}/s with 1% poison vs {base:.0f}/s without ({rate / base:.0%}); "
        f"p99 {p99:.2f}s at {base / 2:.0f}/s offered; {len(bad)} poison inputs"
    )
    good_not_done = sum(1 for i, s in ended.items() if i not in bad and s != "done")
    poison_not_failed = sum(1 for i, s in ended.items() if i in bad and s != "failed")
    if good_not_done:
        row.problems.append(f"{good_not_done} good jobs did not end done")
    if poison_not_failed:
        row.problems.append(f"{poison_not_failed} poison jobs did not end failed")
    return len(bad)


def _rate(times: dict[int, tuple[float, float]]) -> float:
    """Jobs per second: how many ended, over first submit to last end."""
    if not times:
        return 0.0
    span = max(end for _, end in times.values()) - min(start for start, _ in times.values())
    return len(times) / max(span, 1e-6)


Scenario = Callable[[Lab, Row], None]

GATEWAY_SCENARIOS = {"memory-soak", "gateway-rss"}

SCENARIOS: dict[str, tuple[Scenario, dict[str, str]]] = {
    "worker-sigkill": (worker_sigkill, {}),
    "rolling-sigterm": (rolling_sigterm, {}),
    "redis-kill": (redis_kill, {"BATCHLINE_DURABLE_SUBMIT": "1"}),
    "pubsub-kill": (pubsub_kill, {}),
    "poison": (poison, {}),
    "poison-restart": (poison_restart, {}),
    "map-redis-restart": (map_redis_restart, {}),
    "backlog-flood": (backlog_flood, {"BATCHLINE_MAX_BACKLOG": str(FLOOD_LIMIT)}),
    "deadlines": (deadlines, SLOW),
    "backlog-recovery": (backlog_recovery, {"CHAOS_BATCH_SLEEP_S": "0.04"}),
    "gateway-kill": (gateway_kill, {}),
    "chain-middle-kill": (chain_middle_kill, {}),
    "fan-branch-kill": (fan_branch_kill, {}),
    "memory-soak": (memory_soak, ECHO),
    "gateway-rss": (gateway_rss, ECHO),
}


def run_scenario(name: str, timing: Timing, processes: Processes, workdir: Path) -> Row:
    """Run one scenario in a fresh lab; never raises (a failure is the row's ``error``)."""
    scenario, env = SCENARIOS[name]
    row = Row(name, timing.n)
    try:
        with Lab(workdir / name, processes, timing, env) as lab:
            try:
                scenario(lab, row)
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"
            lab.stop_workers()
            if name not in GATEWAY_SCENARIOS:  # (echo through a gateway: no chaos counters)
                with contextlib.suppress(BatchlineError, redis.exceptions.RedisError):
                    lab.tally(row)
            if name == "rolling-sigterm" and row.extra_executions:
                row.problems.append(f"{row.extra_executions} executions re-ran after SIGTERM")
    except Exception as exc:
        row.error = row.error or f"{type(exc).__name__}: {exc}"
    return row


# -- output ---------------------------------------------------------------------------------

COLUMNS = [
    ("scenario", 16),
    ("accepted", 8),
    ("done", 6),
    ("failed", 6),
    ("expired", 7),
    ("cancelled", 9),
    ("lost", 5),
    ("executions", 10),
    ("extra exec", 10),
    ("dup results", 11),
    ("dead", 5),
    ("drain s", 7),
    ("faults", 6),
    ("ok", 3),
    ("target", 36),
    ("met", 3),
]


def table(rows: Sequence[Row]) -> str:
    lines = ["  ".join(f"{title:>{width}}" for title, width in COLUMNS)]
    for row in rows:
        values = [
            row.scenario,
            row.accepted,
            row.done,
            row.failed,
            row.expired,
            row.cancelled,
            row.lost,
            row.executions,
            row.extra_executions,
            row.duplicate_results,
            row.dead_lettered,
            "-" if row.drain_s is None else f"{row.drain_s:.2f}",
            row.faults,
            "yes" if row.ok else "NO",
            row.target,
            "-" if row.met is None else ("yes" if row.met else "NO"),
        ]
        lines.append("  ".join(f"{v!s:>{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True)))
    for row in rows:
        for text in ([row.error] if row.error else []) + row.problems + row.notes:
            lines.append(f"{row.scenario}: {text}")
    return "\n".join(lines)


def run(names: Sequence[str], timing: Timing) -> list[Row]:
    rows: list[Row] = []
    with scratch_dir() as workdir:
        (workdir / "logs").mkdir()
        with Processes(workdir / "logs") as processes:
            for name in names:
                row = run_scenario(name, timing, processes, workdir)
                rows.append(row)
                print(table([row]).splitlines()[1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)}")
    parser.add_argument("--n", type=int, default=None, help="jobs per scenario")
    parser.add_argument("--quick", action="store_true", help="N = 1,000, shorter timings")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file")
    parser.add_argument(
        "--verbose", action="store_true", help="log the client's reconnections (stderr)"
    )
    args = parser.parse_args(argv)
    if not args.verbose:  # every injected fault would log a reconnection
        logging.getLogger("queueing").setLevel(logging.ERROR)
    names = args.scenarios or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    timing = Timing.of(args.quick, args.n)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("  ".join(f"{title:>{width}}" for title, width in COLUMNS), flush=True)
    rows = run(names, timing)
    print()
    print(table(rows))
    out = args.out or ROOT / "bench" / "results" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine_info(),
        "quick": args.quick,
        "timing": dataclasses.asdict(timing),
        "scenarios": [{**dataclasses.asdict(row), "ok": row.ok} for row in rows],
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
