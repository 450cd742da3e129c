"""``batchline up --workers per-pipeline|per-stage|one``: a real ``batchline up`` (embedded
server, gateway, workers) serves the pipelines in each process layout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchline.up import DEFAULT_WORKERS, WORKER_MODES, worker_processes
from pipelines.examples import composed, echo
from queueing.server import free_port
from tests.conftest import ROOT
from tests.support import children

PIPELINES = "pipelines.examples.echo,pipelines.examples.composed"
READY_S = 60.0


def test_each_mode_groups_the_stages_into_processes() -> None:
    topologies = {p.name: p.compile() for p in (echo, composed)}
    assert worker_processes(topologies, "per-stage") == [
        ("echo.echo", ["echo.echo"]),
        ("composed.model_one", ["composed.model_one"]),
        ("composed.model_two", ["composed.model_two"]),
    ]
    assert worker_processes(topologies, "per-pipeline") == [
        ("echo", ["echo"]),
        ("composed", ["composed"]),
    ]
    assert worker_processes(topologies, "one") == [("worker", ["echo", "composed"])]
    assert DEFAULT_WORKERS in WORKER_MODES


def _cmdline(pid: int) -> list[str]:
    return [w.decode() for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if w]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHLINE_REDIS_URL")}
        env.update(
            {
                "BATCHLINE_DATA_DIR": str(tmp_path / mode),
                "BATCHLINE_PIPELINES": PIPELINES,
                "BATCHLINE_DEVICE": "cpu",
            }
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "batchline", "up", "--workers", mode, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in started:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve_and_check(process: subprocess.Popen[bytes], base: str, workers: int) -> None:
    limit = time.monotonic() + READY_S
    with httpx.Client(base_url=base, timeout=10) as http:
        while True:
            assert process.poll() is None, "batchline up exited"
            try:
                docs = http.get("/v1/pipelines").json()["pipelines"]
                if len(docs) == 2 and all(s["workers"] for d in docs for s in d["stages"]):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < limit, "the workers did not all start"
            time.sleep(0.2)
        assert http.post("/v1/pipelines/echo", json={"input": {"a": 1}}).json()["result"] == {
            "a": 1
        }
        answer = http.post("/v1/pipelines/composed", json={"input": {"data": [0.5, 1.5]}}).json()
        assert answer["status"] == "done", answer
    commands = [_cmdline(pid) for pid in children(process.pid)]
    assert sum("worker" in c for c in commands) == workers, commands
    assert sum("web" in c for c in commands) == 1


@pytest.mark.parametrize(("mode", "workers"), [("one", 1), ("per-pipeline", 2)])
def test_batchline_up_serves_the_pipelines(up: Any, mode: str, workers: int) -> None:
    process, base = up(mode)
    _serve_and_check(process, base, workers)
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
