"""Fixtures of the worker tests: a client, and real worker processes that never outlive a test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from queueing.client import Client
from queueing.settings import Settings
from tests.conftest import start_worker


class Workers:
    """Starts real ``batchline worker`` processes and kills whatever is left at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *targets: str,
        burst: bool = False,
        name: str | None = None,
        settings: Settings | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        # The test pipelines need no torch: device "cpu" spares each start-up its import (~1 s).
        env = {"BATCHLINE_DEVICE": "cpu", **env}
        process = start_worker(settings or self.settings, *targets, burst=burst, name=name, **env)
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
