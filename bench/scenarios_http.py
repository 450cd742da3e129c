"""batchline through its HTTP gateway, against the HTTP ceiling of the machine and a plain
FastAPI process that runs the model inline.

Each scenario runs its servers as deployed, as real processes on the run's Redis server:
``python -m batchline worker <pipeline>`` (one worker) and ``python -m batchline web --port P``
(the gateway: uvicorn, one process, ``REDIS_URL`` and ``BATCHLINE_PREFIX`` from the
environment; ``--log-level WARNING`` as the bench's workers, so the access log is silent);
``http-echo-sync-web2`` adds ``--workers 2`` (uvicorn's supervisor and two gateway processes).
``http-hello`` and ``http-mlp-inline`` run :mod:`bench.hello_app` / :mod:`bench.mlp_app`
instead: plain FastAPI apps served by ``uvicorn.run`` with the gateway's arguments (same loop
and HTTP implementation, one process).

The load is a closed loop (:mod:`bench.loadgen`: wrk when installed, else a Python asyncio
generator) of C connections, each sending its next request as soon as its previous answer is
in, for a fixed time (5 s; 2 s with ``--quick``; after a 1 s warm-up at the same C):

* ``items/s``: iterations answered 2xx with the expected body, per second, at C = 64
  (``http-echo-sync-c256``: C = 256);
* ``p50``/``p99 ms``: per iteration at that C (the sync endpoint and hello: per request, wrk's
  histogram; poll: submit sent to poll answered);
* ``c1 p50``/``c1 p99 ms``: the same loop at C = 1 (3 s; 1 s with ``--quick``).

CPU is metered per process tree during the throughput pass (the gateway's includes its uvicorn
worker processes): per item, of the client (this process and wrk), the gateway or the plain
app, the worker and Redis.

The iterations:

* ``http-hello``: ``POST /hello`` with the echo body (read, not parsed), answer
  ``{"hello":"world"}``;
* ``http-echo-sync`` / ``http-mlp-sync``: ``POST /v1/pipelines/<name>`` ``{"input": ...}``
  (submit and wait, one request), the answer a 200 job document with the right ``result``;
* ``http-mlp-inline``: the same request as ``http-mlp-sync``, answered by the model run in the
  handler (``{"result": {"label": ...}}``);
* ``http-echo-poll`` / ``http-mlp-poll``: ``POST /v1/pipelines/<name>/jobs`` (a 202 with the
  job id) then ``GET /v1/jobs/<id>?wait=5`` on the same connection (a long poll that answers
  when the job is done), two requests per iteration (with wrk: one connection per thread).

echo's input is 256 fixed floats (a 2.4 KB body; its result must be the same list); mlp's is
16 floats (its result must hold a ``label``). Every answer is checked: a non-2xx status, a
socket error or a 2xx without the expected body is an error (JSON: per pass, by kind), and a
derived figure per scenario says how many there were (goal: none).

Goals (issue 8's): sync echo at >= 0.5x hello's requests/s at C = 64 (long-run: 0.6x); at
C = 256 >= 0.9x the C = 64 figure with no error; echo sync's c1 p50 (echo's batch wait is 0)
at most 1 ms above hello's; the gateway's CPU per echo request at most 150 µs; mlp sync at C = 64
with one worker >= 1.0x the plain app running the model inline; mlp over HTTP at >= 0.75x echo
over HTTP at C = 64 (sync and poll). ``http-echo-sync-web2`` shows its ratio to the
one-process gateway, without a target.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bench import loadgen
from bench.harness import READY_TIMEOUT_S, BenchError, Child, Context, watching
from bench.loadgen import Call, LoadResult, Shape, SubmitPoll
from bench.registry import Derived, Goal, scenario
from bench.scenarios_queue import cpu_extra, cpu_per_item
from bench.stats import Result
from bench.workloads import MLP
from queueing.server import free_port

HOST = "127.0.0.1"
LOAD_C = 64
"""Connections of the throughput pass."""
IDLE_C = 1
"""Connections of the latency floor pass (the table's c1 columns)."""
WIDE_C = 256
"""Connections of ``http-echo-sync-c256``."""
WEB_PROCESSES = 2
"""Gateway processes of ``http-echo-sync-web2`` (``batchline web --workers``)."""
WARMUP_S = (1, 1)
LOAD_S = (5, 2)
IDLE_S = (3, 1)
WIDE_S = (8, 3)
"""Seconds of each pass (full, --quick); whole seconds (wrk's ``-d``)."""
POLL_WAIT_S = 5
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Target:
    """What a scenario sends to a pipeline and what the answer must hold."""

    pipeline: str
    input: Any
    expect: str
    """Text of the job document's result (only a done job's document has a ``result``)."""

    @property
    def body(self) -> bytes:
        return orjson.dumps({"input": self.input})

    def sync(self) -> Shape:
        return Call(
            "POST",
            f"/v1/pipelines/{self.pipeline}",
            self.body,
            self.expect,
            {"Content-Type": "application/json"},
        )

    def poll(self) -> Shape:
        return SubmitPoll(
            f"/v1/pipelines/{self.pipeline}/jobs",
            self.body,
            f"/v1/jobs/{{id}}?wait={POLL_WAIT_S}",
            self.expect,
        )


ECHO_INPUT = [round(math.sin(i) * 10, 6) for i in range(256)]
"""256 fixed floats: a 2.4 KB body (the issue's gateway target is per echo request of that size)."""
ECHO = Target("echo", ECHO_INPUT, '"result":' + orjson.dumps(ECHO_INPUT).decode())
MLP_TARGET = Target("mlp", MLP.make(1)[0], '"result":{"label":')
HELLO = Call("POST", "/hello", ECHO.body, '{"hello":"world"}', {"Content-Type": "application/json"})


# -- servers ---------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(child: Child, url: str, ready: Callable[[int, bytes], bool]) -> None:
    """Poll ``url`` until ``ready(status, body)``; BenchError if ``child`` exits first or
    after :data:`~bench.harness.READY_TIMEOUT_S`."""
    limit = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            if ready(*_get(url)):
                return
        if not child.alive():
            raise BenchError(
                f"{child.name} exited with {child.process.returncode} at start:\n{child.log_tail()}"
            )
        if time.monotonic() > limit:
            raise BenchError(f"{child.name} was not ready in {READY_TIMEOUT_S:.0f}s")
        time.sleep(0.05)


def start_http_server(
    ctx: Context,
    name: str,
    argv: Callable[[int], Sequence[str]],
    env: Mapping[str, str],
    probe: str,
    ready: Callable[[int, bytes], bool],
) -> tuple[Child, str]:
    """Start ``argv(port)`` on a free port and wait until ``GET probe`` is ``ready``; retried
    on another port if the first was taken meanwhile. (child, base URL)."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        child = ctx.processes.start(name, argv(port), env)
        base = f"http://{HOST}:{port}"
        try:
            wait_until_ready(child, base + probe, ready)
        except BenchError:
            ctx.stop(child)
            if attempt + 1 < PORT_ATTEMPTS and "address already in use" in child.log_tail():
                continue
            raise
        return child, base
    raise AssertionError("unreachable")


@contextlib.contextmanager
def gateway(
    ctx: Context, name: str, pipeline: str, processes: int = 1
) -> Iterator[tuple[str, dict[str, Child]]]:
    """One worker for ``pipeline`` and one gateway (``--workers processes``) on a fresh
    namespace of the run's server; (base URL, {"worker": ..., "gateway": ...}), stopped
    (gateway first) on the way out."""
    namespace = ctx.namespace(name)
    settings = ctx.settings(namespace)
    worker = ctx.start_batchline_worker(settings, [pipeline])
    try:
        env = ctx.env(
            {
                "REDIS_URL": ctx.redis_url,
                "BATCHLINE_REDIS_URL": ctx.redis_url,
                "BATCHLINE_PREFIX": namespace,
            }
        )
        web, base = start_http_server(
            ctx,
            "gateway",
            lambda port: [
                *(sys.executable, "-m", "batchline", "--log-level", "WARNING", "web"),
                *("--host", HOST, "--port", str(port)),
                *(("--workers", str(processes)) if processes > 1 else ()),
            ],
            env,
            "/readyz",
            lambda status, body: status == 200 and pipeline in json.loads(body)["pipelines"],
        )
        try:
            yield base, {"gateway": web, "worker": worker}
        finally:
            ctx.stop(web)
    finally:
        ctx.stop(worker)
        ctx.forget(namespace)


@contextlib.contextmanager
def app_server(ctx: Context, module: str, probe: str) -> Iterator[tuple[str, dict[str, Child]]]:
    """A plain app of the bench (``python -m <module>``: :mod:`bench.hello_app`,
    :mod:`bench.mlp_app`) on a free port, ready once ``GET probe`` answers 200; (base URL,
    {"server": ...})."""
    child, base = start_http_server(
        ctx,
        module.rsplit(".", 1)[-1],
        lambda port: [
            *(sys.executable, "-m", module),
            *("--host", HOST, "--port", str(port), "--log-level", "warning"),
        ],
        ctx.env(),
        probe,
        lambda status, body: status == 200,
    )
    try:
        yield base, {"server": child}
    finally:
        ctx.stop(child)


def server_options(processes: int = 1) -> dict[str, str]:
    """What uvicorn's ``auto`` loop and HTTP implementation resolve to here."""
    from importlib.util import find_spec

    return {
        "loop": "uvloop" if find_spec("uvloop") else "asyncio",
        "http": "httptools" if find_spec("httptools") else "h11",
        "processes": str(processes),
    }


# -- the passes ------------------------------------------------------------------------------


def _load(ctx: Context, base: str, shape: Shape, connections: int, seconds: int) -> LoadResult:
    try:
        return loadgen.run(base, shape, connections, seconds, on_start=ctx.processes.watch)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None


def run_http_scenario(
    ctx: Context,
    name: str,
    servers: contextlib.AbstractContextManager[tuple[str, dict[str, Child]]],
    shape: Shape,
    *,
    connections: int = LOAD_C,
    seconds: tuple[int, int] = LOAD_S,
    idle: bool = True,
    processes: int = 1,
) -> Result:
    """Warm-up, the throughput pass at ``connections`` (CPU of every process tree metered),
    then (``idle``) the pass at concurrency 1; see the module doc. ``processes``: the HTTP
    server's (for the JSON)."""
    with servers as (base, children), watching(*children.values()):
        _load(ctx, base, shape, connections, int(ctx.cap_s(*WARMUP_S)))
        meter = ctx.cpu_meter(**{n: c.pid for n, c in children.items()})
        load = _load(ctx, base, shape, connections, int(ctx.cap_s(*seconds)))
        cpu = meter.read()
        floor = _load(ctx, base, shape, IDLE_C, int(ctx.cap_s(*IDLE_S))) if idle else None
    if load.ok == 0:
        raise BenchError(
            f"{name}: no request answered as expected at C={connections} "
            f"({load.non_2xx} non-2xx, {load.socket_errors} socket errors, {load.wrong} wrong; "
            f"first non-2xx: {load.first_error[:200] or '-'})"
        )
    passes = {f"c{connections}": load.to_dict()}
    if floor is not None:
        passes[f"c{IDLE_C}"] = floor.to_dict()
    requests_per_iteration = 2 if isinstance(shape, SubmitPoll) else 1
    return Result(
        name,
        load.ok,
        load.seconds,
        latency=load.latency,
        idle_latency=floor.latency if floor else None,
        extra={
            "generator": load.generator,
            "connections": connections,
            "requests_per_item": requests_per_iteration,
            "http_requests_per_s": load.requests_per_s,
            "errors": load.errors + (floor.errors if floor else 0),
            "passes": passes,
            "server_options": server_options(processes),
            "c1_items_per_s": floor.ok_per_s if floor else None,
            **cpu_extra(cpu, load.ok),
        },
    )


# -- derived figures -------------------------------------------------------------------------


def _errors(name: str) -> Derived:
    return Derived(
        "errors (non-2xx, socket, wrong body)",
        (name,),
        lambda r: float(r[name].extra.get("errors", 0)),
        at_most=0,
        formula="non-2xx answers + socket errors + 2xx answers without the expected body, "
        "in the measured passes (not the warm-up)",
    )


def _c1_p50_above(this: str, reference: str) -> Callable[[Mapping[str, Result]], float | None]:
    def compute(results: Mapping[str, Result]) -> float | None:
        mine, theirs = results[this].idle_latency, results[reference].idle_latency
        if mine is None or theirs is None:
            return None
        return mine.p50 - theirs.p50

    return compute


# -- the scenarios ---------------------------------------------------------------------------


@scenario(
    "http-hello",
    f"bare FastAPI hello world (POST, uvicorn as the gateway), C={LOAD_C} and C={IDLE_C}",
    derived=[_errors("http-hello")],
)
def http_hello(ctx: Context) -> Result:
    return run_http_scenario(ctx, "http-hello", app_server(ctx, "bench.hello_app", "/hello"), HELLO)


@scenario(
    "http-echo-sync",
    f"POST /v1/pipelines/echo (256 floats, submit and wait), C={LOAD_C} and C={IDLE_C}",
    goals=[
        Goal("http-hello", 0.5),
        Goal("http-hello", 0.6, label="long-run"),
        Goal("echo-client"),
    ],
    derived=[
        _errors("http-echo-sync"),
        Derived(
            "c1 p50 ms above http-hello (echo's batch wait 0)",
            ("http-echo-sync", "http-hello"),
            _c1_p50_above("http-echo-sync", "http-hello"),
            unit="ms",
            at_most=1.0,
            formula="c1 p50(http-echo-sync) - c1 p50(http-hello)",
        ),
        cpu_per_item("http-echo-sync", "gateway", "gateway CPU per request", at_most=150),
    ],
)
def http_echo_sync(ctx: Context) -> Result:
    return run_http_scenario(
        ctx, "http-echo-sync", gateway(ctx, "http-echo-sync", "echo"), ECHO.sync()
    )


@scenario(
    "http-echo-sync-c256",
    f"POST /v1/pipelines/echo (submit and wait), C={WIDE_C}",
    goals=[Goal("http-echo-sync", 0.9)],
    derived=[_errors("http-echo-sync-c256")],
)
def http_echo_sync_c256(ctx: Context) -> Result:
    name = "http-echo-sync-c256"
    return run_http_scenario(
        ctx,
        name,
        gateway(ctx, name, "echo"),
        ECHO.sync(),
        connections=WIDE_C,
        seconds=WIDE_S,
        idle=False,
    )


@scenario(
    "http-echo-sync-web2",
    f"POST /v1/pipelines/echo (submit and wait), `batchline web --workers {WEB_PROCESSES}`, "
    f"C={LOAD_C} and C={IDLE_C}",
    goals=[Goal("http-echo-sync"), Goal("http-hello")],
    derived=[
        _errors("http-echo-sync-web2"),
        cpu_per_item(
            "http-echo-sync-web2", "gateway", f"gateway CPU per request ({WEB_PROCESSES} processes)"
        ),
    ],
)
def http_echo_sync_web2(ctx: Context) -> Result:
    name = "http-echo-sync-web2"
    return run_http_scenario(
        ctx,
        name,
        gateway(ctx, name, "echo", processes=WEB_PROCESSES),
        ECHO.sync(),
        processes=WEB_PROCESSES,
    )


@scenario(
    "http-echo-poll",
    f"POST /v1/pipelines/echo/jobs then GET /v1/jobs/{{id}}?wait={POLL_WAIT_S}, "
    f"C={LOAD_C} and C={IDLE_C}",
    goals=[Goal("http-echo-sync")],
    derived=[_errors("http-echo-poll")],
)
def http_echo_poll(ctx: Context) -> Result:
    return run_http_scenario(
        ctx, "http-echo-poll", gateway(ctx, "http-echo-poll", "echo"), ECHO.poll()
    )


@scenario(
    "http-mlp-inline",
    f"plain FastAPI running the mlp model inline per request (bench/mlp_app.py), "
    f"C={LOAD_C} and C={IDLE_C}",
    goals=[Goal("http-hello")],
    derived=[_errors("http-mlp-inline")],
)
def http_mlp_inline(ctx: Context) -> Result:
    return run_http_scenario(
        ctx, "http-mlp-inline", app_server(ctx, "bench.mlp_app", "/healthz"), MLP_TARGET.sync()
    )


@scenario(
    "http-mlp-sync",
    f"POST /v1/pipelines/mlp (16 floats, submit and wait), C={LOAD_C} and C={IDLE_C}",
    goals=[Goal("http-mlp-inline", 1.0), Goal("http-echo-sync", 0.75)],
    derived=[_errors("http-mlp-sync")],
)
def http_mlp_sync(ctx: Context) -> Result:
    return run_http_scenario(
        ctx, "http-mlp-sync", gateway(ctx, "http-mlp-sync", "mlp"), MLP_TARGET.sync()
    )


@scenario(
    "http-mlp-poll",
    f"POST /v1/pipelines/mlp/jobs then GET /v1/jobs/{{id}}?wait={POLL_WAIT_S}, "
    f"C={LOAD_C} and C={IDLE_C}",
    goals=[Goal("http-echo-poll", 0.75)],
    derived=[_errors("http-mlp-poll")],
)
def http_mlp_poll(ctx: Context) -> Result:
    return run_http_scenario(
        ctx, "http-mlp-poll", gateway(ctx, "http-mlp-poll", "mlp"), MLP_TARGET.poll()
    )
