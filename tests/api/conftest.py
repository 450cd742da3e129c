"""Fixtures for the gateway: the real app served by a real uvicorn (in a thread), against the
real server, with real worker processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.protocol import BoundedHttpToolsProtocol
from pipelines.loading import load_pipelines
from queueing.connection import connect_async
from queueing.settings import Settings
from tests.conftest import start_worker
from workers.worker import publish

API_PIPELINES = ("pipelines.examples", "tests.api.pipelines")


class LiveGateway:
    """One gateway app served on a free local port until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            ws="none",
            http=BoundedHttpToolsProtocol,
        )
        self.server = uvicorn.Server(config)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self) -> LiveGateway:
        self.thread.start()
        limit = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > limit:
                self.stop()
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.replace(pipelines=API_PIPELINES)


@pytest.fixture
def register() -> Callable[[Settings], None]:
    """Publish the test pipelines to the registry, as `batchline register` does."""

    def run(settings: Settings) -> None:
        topologies = [p.compile() for p in load_pipelines(settings.pipelines).values()]

        async def go() -> None:
            client = connect_async(settings)
            try:
                await publish(client, settings, topologies)
            finally:
                await client.aclose()

        asyncio.run(go())

    return run


@pytest.fixture
def start_gateway() -> Iterator[Callable[[Settings], LiveGateway]]:
    """Start gateways (stopped at the end of the test)."""
    started: list[LiveGateway] = []

    def start(settings: Settings) -> LiveGateway:
        gateway = LiveGateway(settings).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.thread.is_alive():
            gateway.stop()


@pytest.fixture
def gateway(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> LiveGateway:
    """A gateway with the test pipelines registered (and no worker yet)."""
    register(api_settings)
    return start_gateway(api_settings)


@pytest.fixture
def http(gateway: LiveGateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


@pytest.fixture
def workers(api_settings: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real worker processes (stopped with SIGTERM at the end of the test)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*targets: str, **kwargs: str) -> subprocess.Popen[bytes]:
        process = start_worker(api_settings, *targets, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
