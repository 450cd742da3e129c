"""The lighter install: the gateway, the client and the CLI's pipeline listing import no
framework, and without an extra the workers skip what needs it, saying which ``pip install``
brings it (real subprocesses, with the frameworks made unimportable by the import system)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from queueing.settings import Settings
from tests.conftest import ROOT, worker_env

FRAMEWORKS = ("torch", "sklearn", "keras", "gymnasium", "ray", "joblib")
WITHOUT = ",".join(FRAMEWORKS)


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_gateway_client_and_pipeline_listing_import_no_framework() -> None:
    done = run_python(
        f"""
        import json, sys
        import api.app, queueing.client
        from api.app import app
        from queueing.client import AsyncClient, Client
        gateway = sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)
        from batchline.cli import load_topologies, _settings, parser
        topologies = load_topologies(_settings(parser().parse_args(["procfile"])))
        listing = sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)
        print(json.dumps([gateway, listing, sorted(topologies)]))
        """
    )
    assert done.returncode == 0, done.stderr
    gateway, listing, pipelines = json.loads(done.stdout)
    assert gateway == []
    assert listing == []
    assert {"mlp", "iris", "keras_tabular", "cartpole", "echo"} <= set(pipelines)


def test_an_adapter_without_its_extra_names_the_pip_install() -> None:
    env = worker_env(Settings(), BATCHLINE_TEST_WITHOUT=WITHOUT)
    env["PYTHONPATH"] = f"{ROOT / 'tests' / 'without_extras'}:{ROOT}"
    done = run_python(
        """
        from workers.adapters.extras import MissingExtra
        from pipelines.examples.iris import IrisClassifier
        from pipelines.examples.image_classifier import ImageClassifier
        for cls in (ImageClassifier, IrisClassifier):
            try:
                cls().setup("cpu")
            except MissingExtra as exc:
                print(exc)
        """,
        env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ImageClassifier needs torch, which is not installed: pip install 'batchline[torch]'",
        "IrisClassifier needs sklearn, joblib, which is not installed: "
        "pip install 'batchline[sklearn]'",
    ]


def test_a_worker_skips_the_pipelines_whose_extras_are_missing(settings: Settings) -> None:
    env = worker_env(
        settings.replace(pipelines=("pipelines.examples",)),
        BATCHLINE_TEST_WITHOUT=WITHOUT,
        BATCHLINE_DEVICE="cpu",
    )
    env["PYTHONPATH"] = f"{ROOT / 'tests' / 'without_extras'}:{ROOT}"
    command = [sys.executable, "-m", "batchline", "worker", "--burst", "echo", "mlp", "iris"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serving echo.echo on cpu" in done.stderr
    assert (
        "skipping pipeline mlp: it needs torch (the [torch] extra): pip install 'batchline[torch]'"
        in done.stderr
    )
    assert "skipping pipeline iris: it needs sklearn, joblib (the [sklearn] extra)" in done.stderr

    alone = subprocess.run(
        [*command[:5], "mlp"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert alone.returncode == 2, alone.stderr
    assert "nothing to run here: mlp needs torch" in alone.stderr
    assert "pip install 'batchline[torch]'" in alone.stderr


def test_every_package_is_in_the_distribution() -> None:
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("api", "batchline", "pipelines", "queueing", "workers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


def test_batchline_up_without_the_extras_serves_the_rest(tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHLINE_REDIS_URL")}
    env.update(
        {
            "BATCHLINE_DATA_DIR": str(tmp_path / "data"),
            "BATCHLINE_PIPELINES": "pipelines.examples",
            "BATCHLINE_TEST_WITHOUT": WITHOUT,
            "PYTHONPATH": f"{ROOT / 'tests' / 'without_extras'}:{ROOT}",
        }
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "batchline", "up", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        limit = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:
                assert up.poll() is None, log.read_text()
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < limit, log.read_text()
                time.sleep(0.2)
            names = [p["name"] for p in http.get("/v1/pipelines").json()["pipelines"]]
            assert names == ["composed", "echo", "generate"]  # (generate: numpy only)
            answer = http.post("/v1/pipelines/echo", json={"input": 5}).json()
            assert answer["result"] == 5
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(30)
    output = log.read_text()
    assert code == 0, output
    for line in (
        "skipping pipeline mlp: it needs torch (the [torch] extra): pip install 'batchline[torch]'",
        "skipping pipeline cartpole: it needs gymnasium, torch (the [rl] extra)",
        "skipping pipeline keras_tabular: it needs keras, torch (the [keras] extra)",
        "skipping pipeline iris: it needs sklearn, joblib (the [sklearn] extra)",
    ):
        assert line in output
