"""``batchline up``: the one-command local deployment.

With no ``REDIS_URL`` it starts the embedded server (under ``BATCHLINE_DATA_DIR``), then
publishes the pipelines to the registry and runs, each as its own process with its output
prefixed by its name: the gateway (``batchline web``) and the workers, as ``--workers`` says:
``one`` (the default: a single ``batchline worker`` process runs every stage),
``per-pipeline`` (``batchline worker <pipeline>``, one process per pipeline) or ``per-stage``
(``batchline worker <pipeline>.<stage>``, each stage alone, as the Procfile and the deployment
recipes scale them).

``one`` is the default because ``up`` is for development: every worker process that runs a
model imports torch (or keras, sklearn) and loads its own copy, so one process takes about a
fifth of the memory of one per stage with the examples and is ready in half the time
(``python -m bench.up_rss`` measures it). What it gives up is isolation, which ``up`` does
not offer anyway (a child that exits stops everything), and parallelism across processes
(its stages' model calls run in threads of one process). Pipelines whose extras are not
installed were dropped by the CLI, with a warning naming the ``pip install`` that brings them.

Children run in their own sessions, so a Ctrl-C reaches this supervisor alone; it sends
SIGTERM to every child (the gateway stops accepting, workers finish the batches in hand), waits
for them, then stops the embedded server, whose AOF keeps whatever is still queued. If any
child exits on its own, everything is stopped the same way (as a Procfile runner does).

If the embedded server dies, it is restarted on the same socket and folder: its AOF brings back
what was queued, and the gateway and workers reconnect by themselves. Past
:data:`SERVER_RESTARTS` restarts within :data:`SERVER_RESTART_WINDOW_S`, or if a restart fails,
everything is stopped with a message that says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from queueing.errors import BatchlineError, ConfigError
from queueing.server import EmbeddedCluster, EmbeddedServer
from queueing.settings import Settings

STOP_GRACE_S = 15.0
"""How long children get to stop after SIGTERM before they are killed."""
_COLORS = ("36", "33", "32", "35", "34", "31")
SERVER_RESTARTS = 5
"""Most restarts of a dying embedded server within SERVER_RESTART_WINDOW_S."""
SERVER_RESTART_WINDOW_S = 300.0
SERVER_START_S = 600.0
"""How long a restarted server may take to answer (it loads its AOF first)."""
WORKER_MODES = ("one", "per-pipeline", "per-stage")
DEFAULT_WORKERS = "one"


def add_workers_option(parser: Any) -> None:
    """``--workers per-pipeline|per-stage|one`` (``BATCHLINE_UP_WORKERS``)."""
    parser.add_argument(
        "--workers",
        choices=WORKER_MODES,
        default=os.environ.get("BATCHLINE_UP_WORKERS") or DEFAULT_WORKERS,
        help="worker processes: one for every stage (default), one per pipeline, one per stage",
    )


def worker_processes(topologies: Mapping[str, Any], mode: str) -> list[tuple[str, list[str]]]:
    """(process name, ``batchline worker`` targets) of each worker process of ``mode``."""
    if mode == "per-stage":
        return [(s, [s]) for topology in topologies.values() for s in topology.stages]
    if mode == "per-pipeline":
        return [(name, [name]) for name in topologies]
    if mode == "one":
        return [("worker", list(topologies))] if topologies else []
    raise ConfigError(f"--workers {mode!r}: use one of {', '.join(WORKER_MODES)}")


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes]
    pump: threading.Thread | None = field(default=None, repr=False)


class Output:
    """Writes lines prefixed with a process name, one writer at a time."""

    def __init__(self, stream: IO[str] | None = None, width: int = 8) -> None:
        self.stream = stream or sys.stdout
        self.width = width
        self.color = self.stream.isatty()
        self._lock = threading.Lock()
        self._colors: dict[str, str] = {}

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            code = self._colors.setdefault(name, _COLORS[len(self._colors) % len(_COLORS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        with self._lock:
            self.stream.write(f"{prefix} {text}\n")
            self.stream.flush()


class Supervisor:
    """Runs child processes, pumps their output through :class:`Output`, stops them all."""

    def __init__(self, env: Mapping[str, str], output: Output) -> None:
        self.env = dict(env)
        self.output = output
        self.children: list[Child] = []

    def spawn(self, name: str, command: Sequence[str]) -> Child:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
        )
        child = Child(name, list(command), process)
        child.pump = threading.Thread(
            target=self._pump, args=(child,), name=f"output-{name}", daemon=True
        )
        child.pump.start()
        self.children.append(child)
        return child

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        for raw in child.process.stdout:
            self.output.line(child.name, raw.decode(errors="replace").rstrip("\n"))

    def exited(self) -> Child | None:
        """A child that has exited, if any."""
        for child in self.children:
            if child.process.poll() is not None:
                return child
        return None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every child still running, wait up to ``grace``, then SIGKILL."""
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        limit = time.monotonic() + grace
        for child in self.children:
            try:
                child.process.wait(max(0.0, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.output.line("up", f"{child.name} did not stop in {grace:g}s; killing it")
                child.process.kill()
                child.process.wait()
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=2)


def start_embedded(settings: Settings, output: Output) -> EmbeddedServer:
    """The embedded server under ``settings.data_dir``, unless one already answers there."""
    server = EmbeddedServer(settings.data_dir, settings.redis_server)
    if server.answers():
        raise ConfigError(
            f"a server already answers on {server.socket} (another `batchline up`?): stop it, "
            f"or set BATCHLINE_DATA_DIR to another folder, or REDIS_URL={server.url} to use it"
        )
    server.start()
    output.line("redis", f"embedded server at {server.url} (AOF and log in {server.data_dir})")
    return server


class ServerKeeper:
    """Restarts the embedded server when it dies, on the same socket and folder (its AOF
    brings back what was queued), at most ``restarts`` times within ``window_s``."""

    def __init__(
        self,
        server: EmbeddedServer,
        output: Output,
        *,
        restarts: int = SERVER_RESTARTS,
        window_s: float = SERVER_RESTART_WINDOW_S,
        start_s: float = SERVER_START_S,
    ) -> None:
        self.server = server
        self.output = output
        self.restarts = restarts
        self.window_s = window_s
        self.start_s = start_s
        self.history: list[float] = []
        """When each restart happened (monotonic seconds)."""

    def check(self) -> str | None:
        """None while the server runs (restarting it first if it has died); else why
        everything must stop."""
        code = self.server.poll()
        if code is None:
            return None
        log_file = self.server.data_dir / "server.log"
        now = time.monotonic()
        self.history = [t for t in self.history if now - t < self.window_s]
        if len(self.history) >= self.restarts:
            return (
                f"the embedded server died {len(self.history) + 1} times within "
                f"{self.window_s:g}s (last exit code {code}); not restarting it again: "
                f"see {log_file}"
            )
        self.history.append(now)
        self.output.line(
            "redis",
            f"embedded server exited with code {code}; restarting it on the same socket, its "
            f"AOF brings back what was queued (restart {len(self.history)} of at most "
            f"{self.restarts} in {self.window_s:g}s; see {log_file})",
        )
        try:
            self.server.start(timeout=self.start_s)
        except BatchlineError as exc:
            return f"could not restart the embedded server: {exc}"
        self.output.line("redis", f"embedded server is back at {self.server.url}")
        return None


def run_up(
    settings: Settings,
    *,
    host: str,
    port: int,
    topologies: Mapping[str, Any],
    publish: Any,
    workers: str = DEFAULT_WORKERS,
    cluster: int = 0,
) -> int:
    """Run everything until Ctrl-C / SIGTERM (0) or until a child exits on its own (1).

    ``topologies`` are the compiled pipelines by name; ``publish(settings)`` writes them to
    the registry (handed in by the CLI, which owns loading them). ``cluster``: instead of one
    embedded server, an embedded Redis Cluster of that many masters (no replicas), which is
    not restarted if a node dies."""
    processes = worker_processes(topologies, workers)
    output = Output(width=max([8, *(len(name) for name, _ in processes)]))
    stopping = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        if not stopping.is_set():
            output.line("up", f"{signal.Signals(signum).name}: stopping everything")
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server: EmbeddedServer | None = None
    nodes: EmbeddedCluster | None = None
    keeper: ServerKeeper | None = None
    supervisor: Supervisor | None = None
    code = 0
    try:
        if not settings.redis_url and cluster:
            nodes = EmbeddedCluster(
                Path(settings.data_dir) / "cluster",
                settings.redis_server,
                masters=cluster,
                partitions=settings.partitions,
            ).start()
            settings = settings.replace(redis_url=nodes.url)
            output.line(
                "redis",
                f"embedded cluster of {cluster} masters at {nodes.url} "
                f"(BATCHLINE_PARTITIONS={settings.partitions}; data in {nodes.data_dir})",
            )
        elif not settings.redis_url:
            server = start_embedded(settings, output)
            keeper = ServerKeeper(server, output)
            settings = settings.replace(redis_url=server.url)
        publish(settings)
        output.line("up", f"registered {', '.join(sorted(topologies)) or 'no pipelines'}")
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": settings.redis_url or "",
                "BATCHLINE_PIPELINES": ",".join(settings.pipelines),
                "BATCHLINE_PARTITIONS": str(settings.partitions),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("BATCHLINE_REDIS_URL", None)  # it would win over the REDIS_URL above
        supervisor = Supervisor(env, output)
        batchline = [sys.executable, "-m", "batchline"]
        supervisor.spawn("web", [*batchline, "web", "--host", host, "--port", str(port)])
        for name, targets in processes:
            supervisor.spawn(name, [*batchline, "worker", *targets])
        output.line(
            "up",
            f"gateway on http://{host}:{port} (docs: /docs), {len(processes)} worker "
            f"process(es), {workers}; Ctrl-C stops everything",
        )
        while not stopping.is_set():
            failure = keeper.check() if keeper is not None else None
            if failure is not None:
                output.line("up", f"{failure}; stopping everything")
                code = 1
                break
            exited = supervisor.exited()
            if exited is not None:
                output.line(
                    "up",
                    f"{exited.name} exited with code {exited.process.returncode}; "
                    "stopping everything",
                )
                code = 1
                break
            stopping.wait(0.2)
    finally:
        # Further Ctrl-Cs must not interrupt the orderly stop below.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop()
        if server is not None:
            server.stop()
            output.line("redis", "embedded server stopped (its AOF keeps what is queued)")
        if nodes is not None:
            nodes.stop()
            output.line("redis", "embedded cluster stopped (its AOFs keep what is queued)")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        output.line("up", "stopped")
    return code
