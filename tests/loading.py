"""A real server that is still loading its dataset: it answers ``-LOADING`` to every command but
a few (CONFIG, INFO), for as long as a test wants.

The server is restarted with the ``key-load-delay`` debug setting (microseconds of sleep per
key loaded) over an AOF padded with keys; ``finish_loading`` sets the delay to 0 (CONFIG SET
works while loading), so the load ends at once. The pad is written as the AOF's RDB preamble
(BGREWRITEAOF) with incompressible 1 KiB values, so that the server serves its clients
between every key or so while it loads (``loading-process-events-interval-bytes``), not only
every 1024 commands as it does for a plain AOF.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time

import pytest
import redis

from queueing.server import EmbeddedServer

PADDING_KEYS = 2000
KEY_LOAD_DELAY_US = 20_000
"""At most 40 s of loading: far longer than a test waits before it calls finish_loading."""


def pad_and_stop(server: EmbeddedServer, keys: int = PADDING_KEYS) -> None:
    """Add ``keys`` padding keys to the running ``server``, rewrite its AOF, stop it (clean)."""
    client = redis.Redis.from_url(server.url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"test:pad:{i}", os.urandom(1024))
        pipe.execute()
        client.bgrewriteaof()
        limit = time.monotonic() + 30
        while True:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            assert time.monotonic() < limit, "the AOF rewrite did not finish"
            time.sleep(0.02)
    finally:
        client.close()
    server.stop()


def _raw_ping(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"PING\r\n")
        return sock.recv(200)


def start_loading(server: EmbeddedServer) -> None:
    """Start the stopped ``server`` so that it loads its AOF slowly; returns once it answers
    ``-LOADING`` (skips the test where the binary lacks the debug setting)."""
    with contextlib.suppress(FileNotFoundError):
        server.socket.unlink()
    server.process = subprocess.Popen(
        [
            *server.command(),
            "--key-load-delay",
            str(KEY_LOAD_DELAY_US),
            "--loading-process-events-interval-bytes",
            "1024",
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    limit = time.monotonic() + 20
    while True:
        if server.process.poll() is not None:
            pytest.skip(f"{server.binary} does not start with --key-load-delay")
        if server.socket.exists():
            with contextlib.suppress(OSError):
                reply = _raw_ping(str(server.socket))
                if reply.startswith(b"-LOADING"):
                    return
                pytest.skip(f"{server.binary} did not load slowly (answered {reply!r})")
        assert time.monotonic() < limit, "the server never answered"
        time.sleep(0.005)


def finish_loading(server: EmbeddedServer, timeout: float = 30.0) -> None:
    """Let the loading server load the rest at full speed; returns once it answers PING."""
    admin = redis.Redis.from_url(server.url, retry=None)
    try:
        admin.config_set("key-load-delay", 0)
        limit = time.monotonic() + timeout
        while True:
            try:
                admin.ping()
                return
            except redis.exceptions.BusyLoadingError:
                assert time.monotonic() < limit, "the server is still loading"
                time.sleep(0.01)
    finally:
        admin.close()
