"""Real worker processes against a private server that is loading its AOF, or that dies and
comes back: the worker waits, then serves; an outage is logged once, not per heartbeat."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from queueing.client import Client
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from tests.conftest import ROOT, worker_env
from tests.loading import finish_loading, pad_and_stop, start_loading
from tests.pipelines import t_batch
from tests.workers.support import KEYS, register, wait_exit, wait_until


class LoggedWorker:
    """A ``batchline worker`` process whose log (stderr) goes to a file."""

    def __init__(self, settings: Settings, log: Path, *targets: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchline", "worker", *targets],
                env=worker_env(settings, BATCHLINE_DEVICE="cpu"),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text()

    def lines(self, *parts: str) -> list[str]:
        return [line for line in self.text().splitlines() if all(p in line for p in parts)]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _settings(server: EmbeddedServer, **changes: object) -> Settings:
    return Settings(
        redis_url=server.url,
        visibility_timeout_s=1.5,
        block_ms=200,
        pipelines=("tests.pipelines",),
    ).replace(**changes)


def test_a_worker_started_while_redis_loads_its_aof_waits_then_serves(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Issue 10.5: it used to exit 1 on BusyLoadingError."""
    settings = _settings(own_server)
    register(settings, t_batch)
    with Client(settings) as client:
        job_id = client.submit("t_batch", {"x": 21}).id
    pad_and_stop(own_server)
    start_loading(own_server)  # answers LOADING until finish_loading
    worker = LoggedWorker(settings, tmp_path / "worker.log", "t_batch")
    try:
        wait_until(
            lambda: worker.lines("loading its dataset") or worker.process.poll() is not None,
            60,
            "the worker met the loading server",
        )
        time.sleep(1.0)  # a few retries
        assert worker.process.poll() is None, worker.text()
        finish_loading(own_server)
        with Client(settings) as client:
            assert client.job(job_id).result(timeout=30) == {"x": 21, "y": 42}
            assert client.submit("t_batch", {"x": 1}).result(timeout=30) == {"x": 1, "y": 2}
        assert len(worker.lines("loading its dataset")) == 1, worker.text()
        assert len(worker.lines("start-up: Redis answers again")) == 1, worker.text()
        worker.process.send_signal(signal.SIGTERM)
        assert wait_exit(worker.process, 30) == 0, worker.text()
    finally:
        worker.close()


def test_an_outage_is_logged_once_and_the_worker_serves_when_redis_is_back(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Issue 10.6: a failed heartbeat used to log a full traceback on every beat."""
    settings = _settings(own_server, visibility_timeout_s=0.3)  # a heartbeat every 0.1 s
    register(settings, t_batch)
    worker = LoggedWorker(settings, tmp_path / "worker.log", "t_batch")
    try:
        wait_until(lambda: worker.lines("serving t_batch.model"), 60, "the worker serves")
        own_server.kill()
        time.sleep(3.0)  # some 30 heartbeats
        assert worker.process.poll() is None, worker.text()
        own_server.start()  # same socket; its AOF brings the registry back
        wait_until(
            lambda: worker.lines("worker", "heartbeat: Redis answers again"),
            30,
            "the worker's heartbeat noticed that Redis is back",
        )
        with Client(settings) as client:
            assert client.submit("t_batch", {"x": 3}).result(timeout=30) == {"x": 3, "y": 6}
        # At most once for the worker's registry heartbeat, once for its stage's (and once
        # for the stage's reads): never per beat. (The stage's beat may not fail at all: a
        # call that started just before the outage retries through it.)
        for who in ("workers.worker", "workers.loop"):
            down = worker.lines(who, "heartbeat: Redis is unreachable")
            still = worker.lines(who, "heartbeat: still failing")
            assert len(down) <= 1, worker.text()
            assert len(still) <= 2, worker.text()  # after 10 s at the earliest: none, or one
        worker.process.send_signal(signal.SIGTERM)
        assert wait_exit(worker.process, 30) == 0, worker.text()
    finally:
        worker.close()
    tracebacks = worker.text().count("Traceback")
    assert tracebacks == 0, f"{tracebacks} tracebacks logged during a 3 s outage"


def test_killed_and_restarted_workers_leave_no_consumers_or_registry_entries(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Issue 10.7: consumers used to pile up in the group (2 -> 10 after 8 restarts) and
    SIGKILLed workers stayed in the registry forever."""
    # The killed workers' own sweeps take 15 s for "long gone" (and they beat every 0.5 s);
    # the survivor's, 2 s.
    patient = settings
    sweeper = settings.replace(visibility_timeout_s=0.2)
    register(settings, t_batch)
    stream = KEYS.stream(0, "t_batch.model")
    started: list[LoggedWorker] = []

    def consumers() -> set[str]:
        return {c["name"].decode() for c in redis_client.xinfo_consumers(stream, "t_batch.model")}

    def registered() -> set[str]:
        return {m.decode() for m in redis_client.zrange(KEYS.workers, 0, -1)}

    def start(worker_settings: Settings) -> tuple[LoggedWorker, str]:
        known = registered()
        worker = LoggedWorker(worker_settings, tmp_path / f"worker-{len(started)}.log", "t_batch")
        started.append(worker)
        wait_until(lambda: worker.lines("serving t_batch.model"), 60, "the worker serves")
        (name,) = registered() - known
        wait_until(lambda: name in consumers(), 10, f"worker {name} reads")
        return worker, name

    try:
        killed = []
        for _ in range(3):  # restarts, each one SIGKILLed
            worker, name = start(patient)
            worker.process.kill()
            worker.process.wait(10)
            killed.append(name)
        assert consumers() == set(killed)
        assert registered() == set(killed)
        time.sleep(2.2)
        survivor, name = start(sweeper)  # its start-up sweep forgets the three
        assert consumers() == {name}
        assert registered() == {name}
        assert survivor.lines("housekeeping removed 3 idle consumer(s)"), survivor.text()

        late, _ = start(patient)  # killed while the survivor runs: its periodic sweep forgets it
        late.process.kill()
        late.process.wait(10)
        wait_until(
            lambda: consumers() == {name} and registered() == {name},
            15,
            "the survivor's periodic sweep forgot the late worker",
        )
        survivor.process.send_signal(signal.SIGTERM)
        assert wait_exit(survivor.process, 30) == 0, survivor.text()
        assert registered() == set()  # it retired
    finally:
        for worker in started:
            worker.close()
