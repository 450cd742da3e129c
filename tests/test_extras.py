"""The lighter install: the gateway, the client and the CLI's pipeline listing import no
framework, and without an extra the workers skip what needs it, saying which ``pip install``
brings it (real subprocesses, with the frameworks made unimportable by the import system)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
