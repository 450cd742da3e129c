"""Fixtures of the composition tests: settings that load the example pipelines and this
folder's test pipelines, a client, and real worker processes that never outlive a test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from queueing.client import Client
from queueing.settings import Settings
from tests.conftest import start_worker

PIPELINES = ("pipelines.examples", "tests.composition.pipelines")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Short timeouts (recovery runs in a test's time); the examples and the test pipelines."""
    return Settings(
        redis_url=redis_url,
        visibility_timeout_s=1.5,
        block_ms=200,
        pipelines=PIPELINES,
    )


class Workers:
    """Starts real ``batchline worker`` processes; kills whatever is left at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, *targets: str, burst: bool = False, name: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        env = {"BATCHLINE_DEVICE": "cpu", **env}
        process = start_worker(self.settings, *targets, burst=burst, name=name, **env)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(10)


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    pool = Workers(settings)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c
