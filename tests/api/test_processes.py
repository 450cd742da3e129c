"""The process model: the Procfile, `honcho start -c worker=2`, and `batchline up`."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from batchline.up import Output, ServerKeeper, start_embedded
from queueing.errors import ConfigError
from queueing.server import EmbeddedServer, free_port
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.api.test_pipelines import live_workers
from tests.conftest import ROOT, worker_env
from tests.loading import pad_and_stop, start_loading
from tests.queueing.helpers import SERVER_BINARY
from tests.support import wait_until

HONCHO = [sys.executable, "-m", "honcho"]


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal ``process``'s group (as a terminal does) and wait for it; kill the group if it
    does not stop."""
    os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def test_the_procfile_is_valid_and_up_to_date() -> None:
    result = subprocess.run(
        [*HONCHO, "-f", str(ROOT / "Procfile"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "web, worker" in result.stderr
    env = {**os.environ, "BATCHLINE_PIPELINES": "pipelines.examples", "PYTHONPATH": str(ROOT)}
    generated = subprocess.run(
        [sys.executable, "-m", "batchline", "procfile"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert (ROOT / "Procfile").read_text() == generated, "run `batchline procfile > Procfile`"


def test_honcho_scales_workers_that_all_consume(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    tmp_path: Path,
) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"worker: {sys.executable} -m batchline worker whoami\n")
    register(api_settings)
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [*HONCHO, "-f", str(procfile), "-d", str(ROOT), "start", "-c", "worker=2"],
            env=worker_env(api_settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with start_gateway(api_settings).client() as http:
            replicas = live_workers(http, "whoami", 2)
            assert len(replicas) == 2
            pids = {info["pid"] for info in replicas.values()}
            jobs = http.post("/v1/pipelines/whoami/jobs", json={"inputs": list(range(40))}).json()
            served = {http.get(job["url"], params={"wait": 30}).json()["result"] for job in jobs}
        assert served == pids  # both replicas did work
    finally:
        stop(honcho)
    output = log.read_text()
    assert "worker.1" in output
    assert "worker.2" in output


def test_batchline_up_runs_everything_and_one_ctrl_c_stops_it(tmp_path: Path) -> None:
    """Server, gateway and a worker per stage (two example pipelines: a process per stage of
    every example, each importing its framework, took 35 s of a 2-core machine)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHLINE_REDIS_URL")}
    env.update(
        {
            "BATCHLINE_DATA_DIR": str(tmp_path / "data"),
            "BATCHLINE_PIPELINES": "pipelines.examples.echo,pipelines.examples.mlp",
            "PYTHONPATH": str(ROOT),
        }
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "batchline", "up", "--workers=per-stage", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            limit = time.monotonic() + 60
            while True:
                assert up.poll() is None, "batchline up exited"
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < limit, "the gateway never became ready"
                time.sleep(0.1)
            echo = http.post("/v1/pipelines/echo", json={"input": {"hello": "world"}}).json()
            assert echo["result"] == {"hello": "world"}
            mlp = http.post("/v1/pipelines/mlp", json={"input": [0.5] * 16}).json()
            assert mlp["status"] == "done"
            workers = {
                **live_workers(http, "echo", 1),
                **live_workers(http, "mlp", 1),
            }
            assert sorted(stage for info in workers.values() for stage in info["stages"]) == [
                "echo.echo",
                "mlp.classify",
            ]
    finally:
        code = stop(up, signal.SIGINT)  # what one Ctrl-C sends
    output = log.read_text()
    assert code == 0, output
    for prefix in ("web ", "echo.echo ", "mlp.classify ", "redis ", "up "):
        assert any(line.startswith(prefix) for line in output.splitlines()), prefix
    assert "stopped after" in output  # workers finished cleanly
    for info in workers.values():
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            pass
        else:
            raise AssertionError(f"worker {info['pid']} is still running")
    with httpx.Client(base_url=base) as http:
        try:
            http.get("/healthz")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the gateway is still running")


# -- `batchline up` keeps its embedded server --------------------------------------------------


def test_the_keeper_restarts_a_dead_server_with_its_data_then_gives_up(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "srv", SERVER_BINARY, appendfsync="always").start()
    out = io.StringIO()
    keeper = ServerKeeper(server, Output(out), restarts=2, window_s=60)
    try:
        with redis.Redis.from_url(server.url) as r:
            r.set("test:queued", "yes")
        assert keeper.check() is None  # running: nothing to do
        for restart in (1, 2):
            server.kill()
            assert keeper.check() is None
            assert server.poll() is None
            with redis.Redis.from_url(server.url) as r:
                assert r.get("test:queued") == b"yes"  # its AOF came back with it
            assert f"restart {restart} of at most 2 in 60s" in out.getvalue()
        server.kill()
        reason = keeper.check()
        assert reason is not None
        assert "died 3 times within 60s" in reason
        assert "server.log" in reason
    finally:
        server.stop()


def test_the_keeper_reports_a_restart_that_fails(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "srv", SERVER_BINARY).start()
    keeper = ServerKeeper(server, Output(io.StringIO()))
    try:
        server.kill()
        server.binary = "/bin/false"  # a restart that cannot come up
        reason = keeper.check()
        assert reason is not None
        assert reason.startswith("could not restart the embedded server")
    finally:
        server.stop()


def test_batchline_up_restarts_its_embedded_server_when_it_dies(tmp_path: Path) -> None:
    """Issue 10.6: the gateway used to answer 503 forever once the embedded server died."""
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHLINE_REDIS_URL")}
    env.update(
        {
            "BATCHLINE_DATA_DIR": str(data),
            "BATCHLINE_PIPELINES": "tests.api.pipelines",  # light: no torch in its workers
            "BATCHLINE_DEVICE": "cpu",
            "PYTHONPATH": str(ROOT),
        }
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "batchline", "up", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def server_pid() -> int | None:
        try:
            with redis.Redis(unix_socket_path=str(data / "redis.sock"), retry=None) as r:
                return int(r.info("server")["process_id"])
        except redis.exceptions.RedisError:
            return None

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:

            def ready() -> bool:
                assert up.poll() is None, log.read_text()
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, 60, "the gateway is ready")
            before = http.post("/v1/pipelines/flaky/jobs", json={"input": "before"}).json()
            assert http.get(before["url"], params={"wait": 30}).json()["result"] == "before"
            time.sleep(1.2)  # appendfsync everysec: let the AOF have it
            pid = server_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: server_pid() not in (None, pid), 60, "up restarted the server")
            wait_until(ready, 60, "the gateway is ready again")
            assert http.get(before["url"]).json()["result"] == "before"  # kept by the AOF
            after = http.post("/v1/pipelines/flaky/jobs", json={"input": "after"}).json()
            assert http.get(after["url"], params={"wait": 30}).json()["result"] == "after"
    finally:
        code = stop(up, signal.SIGINT)
    output = log.read_text()
    assert code == 0, output
    assert "restarting it on the same socket" in output
    assert "embedded server is back" in output


def test_up_refuses_a_folder_whose_server_answers_even_while_it_loads(tmp_path: Path) -> None:
    """The probe (queueing.server.server_answers) counts a server that is loading its AOF: up
    must not unlink its socket and start a second server on the same AOF."""
    server = EmbeddedServer(tmp_path / "srv", SERVER_BINARY).start()
    settings = Settings(data_dir=str(tmp_path / "srv"))
    try:
        pad_and_stop(server)
        start_loading(server)
        with pytest.raises(ConfigError, match="already answers"):
            start_embedded(settings, Output(io.StringIO()))
        server.kill()  # its socket file stays behind: a stale one is no obstacle
        started = start_embedded(settings, Output(io.StringIO()))
        started.stop()
    finally:
        server.kill()
