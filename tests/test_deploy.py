"""The deployment files (``batchline deploy``, committed under deploy/): up to date with the
generator, parseable, a worker for every stage, KEDA triggers on the streams the workers
really read (named by the keys module), probes on routes the gateway really has, graceful
stops as long as the worker's drain, and a Dockerfile with a base argument and a non-root
user. Docker and Kubernetes do not run here: this is what is checked instead."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchline.cli import DEFAULT_PIPELINES, load_topologies, parser
from batchline.deploy import GATEWAY_GRACEFUL_S, GROUPS_ANNOTATION, UID, worker_grace_s
from queueing.keys import Keys
from queueing.lanes import LANES
from queueing.settings import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
SETTINGS = Settings(pipelines=DEFAULT_PIPELINES)


def load(relative: str) -> list[Any]:
    return list(yaml.safe_load_all((DEPLOY / relative).read_text()))


@pytest.fixture(scope="module")
def stages() -> set[str]:
    return {s for t in load_topologies(SETTINGS).values() for s in t.stages}


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], Any]:
    return {(d["kind"], d["metadata"]["name"]): d for d in load("k8s/batchline.yaml")}


def served(command: list[str]) -> list[str]:
    """The stages a ``sh -c "exec batchline worker ..."`` command serves (none for others)."""
    assert command[:2] == ["sh", "-c"], command
    words = shlex.split(command[2].replace("$$", "$"))
    assert words[0] == "exec"
    if words[1:3] != ["batchline", "worker"]:
        return []
    topologies = load_topologies(SETTINGS)
    out: list[str] = []
    for target in words[3:]:
        out += [target] if "." in target else list(topologies[target].stages)
    return out


def test_the_committed_files_are_what_the_generator_makes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHLINE_")}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "batchline", "deploy", "all", "--check", "-o", str(DEPLOY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}{done.stderr}"
    stale = subprocess.run(
        [sys.executable, "-m", "batchline", "deploy", "k8s", "--check", "-o", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stale.returncode == 1
    assert "out of date: run batchline deploy k8s" in stale.stdout


def test_compose_runs_redis_with_aof_and_a_scalable_service_per_procfile_line(
    stages: set[str],
) -> None:
    (doc,) = load("compose.yaml")
    services = doc["services"]
    redis = services.pop("redis")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert {"redis-data:/data"} == set(redis["volumes"])
    procfile = subprocess.run(
        [sys.executable, "-m", "batchline", "procfile"],
        cwd=ROOT,
        env={**os.environ, "BATCHLINE_PIPELINES": ",".join(DEFAULT_PIPELINES)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [ln.split(":", 1)[0] for ln in procfile.splitlines() if ln and ln[0] != "#"]
    assert list(services) == lines
    covered: list[str] = []
    for name, service in services.items():
        assert "container_name" not in service  # --scale needs generated names
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        if name != "web":
            assert "ports" not in service
            assert service["stop_grace_period"] == f"{worker_grace_s(SETTINGS)}s"
        covered += served(service["command"])
    assert sorted(covered) == sorted(stages)  # every stage once
    assert services["web"]["ports"] == ["8000:8000"]


def test_kubernetes_has_a_deployment_per_line_and_every_stage_a_worker(
    k8s: dict[tuple[str, str], Any], stages: set[str]
) -> None:
    deployments = {name: d for (kind, name), d in k8s.items() if kind == "Deployment"}
    assert "web" in deployments
    covered: list[str] = []
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        (container,) = pod["containers"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        if name == "web":
            assert pod["terminationGracePeriodSeconds"] > GATEWAY_GRACEFUL_S
            assert pod["initContainers"][0]["command"] == ["batchline", "register"]
        else:
            assert pod["terminationGracePeriodSeconds"] == worker_grace_s(SETTINGS)
            covered += served(container["command"])
    assert sorted(covered) == sorted(stages)
    service = k8s["Service", "web"]
    assert service["spec"]["selector"] == deployments["web"]["spec"]["selector"]["matchLabels"]
    assert (
        "--appendonly"
        in k8s["StatefulSet", "redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_the_gateway_grace_follows_its_graceful_shutdown() -> None:
    assert parser().parse_args(["web"]).graceful_s == GATEWAY_GRACEFUL_S
    assert worker_grace_s(SETTINGS) >= SETTINGS.visibility_timeout_s + SETTINGS.block_ms / 1000


def test_probes_hit_routes_the_gateway_has(k8s: dict[tuple[str, str], Any]) -> None:
    from api.app import create_app

    # The FastAPI app inside the gateway's fast path; its OpenAPI document lists every route.
    paths = create_app(SETTINGS).app.openapi()["paths"]
    gets = {path for path, methods in paths.items() if "get" in methods}
    (web,) = k8s["Deployment", "web"]["spec"]["template"]["spec"]["containers"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"]["path"] in gets
        assert web[probe]["httpGet"]["port"] == web["ports"][0]["name"]


def test_keda_scales_each_worker_on_the_streams_and_groups_its_stages_use(
    k8s: dict[tuple[str, str], Any], stages: set[str]
) -> None:
    keys = Keys(SETTINGS.prefix)
    scaled = load("k8s/keda.yaml")
    workers = {n for (kind, n) in k8s if kind == "Deployment" and n != "web"}
    seen: set[str] = set()
    for obj in scaled:
        assert obj["kind"] == "ScaledObject"
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target in workers
        deployment = k8s["Deployment", target]
        own = served(deployment["spec"]["template"]["spec"]["containers"][0]["command"])
        expected = {  # (every lane: a stage scaled to zero must wake for a high job too)
            keys.stream(p, stage, lane): Keys.group(stage)
            for stage in own
            for p in range(SETTINGS.partitions)
            for lane in LANES
        }
        groups = json.loads(obj["metadata"]["annotations"][GROUPS_ANNOTATION])
        assert groups == expected
        triggers = obj["spec"]["triggers"]
        assert {t["metadata"]["stream"] for t in triggers} == set(expected)
        for trigger in triggers:
            assert trigger["type"] == "redis-streams"
            # consumerGroup would switch KEDA to XPENDING (blind to new entries): XLEN it is.
            assert "consumerGroup" not in trigger["metadata"]
            assert int(trigger["metadata"]["streamLength"]) > 0
            assert trigger["metadata"]["addressFromEnv"] == "REDIS_ADDRESS"
        assert obj["spec"]["minReplicaCount"] == 0
        seen |= set(own)
    assert seen == stages
    config = k8s["ConfigMap", "batchline"]["data"]
    assert config["REDIS_URL"].startswith(f"redis://{config['REDIS_ADDRESS']}/")


def test_the_dockerfile_picks_its_base_by_argument_and_runs_as_a_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=cpu$", text, re.M)
    bases = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    names = {alias for _, alias in bases}
    assert {"base-cpu", "base-cuda", "build", "runtime"} <= names
    assert ("base-${BASE}", "build") in bases
    assert ("base-${BASE}", "runtime") in bases
    assert "COPY --from=build" in text  # multi-stage: the runtime gets the venv alone
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == str(UID)
    assert "PYTHONPATH=/models" in text  # model code mounted there, or baked in a child image


def test_k8s_for_a_redis_cluster_uses_its_nodes_and_cluster_triggers(tmp_path: Path) -> None:
    """`--redis-cluster`: no bundled Redis, the nodes and the partitions in the ConfigMap, and a
    `redis-cluster-streams` trigger on each partition's stream of every stage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHLINE_")}
    env["BATCHLINE_PARTITIONS"] = "6"
    nodes = "10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379"
    command = [sys.executable, "-m", "batchline", "deploy", "k8s", "-o", str(tmp_path)]
    subprocess.run(
        [*command, "--redis-cluster", nodes],
        check=True,
        env=env,
        cwd=ROOT,
    )
    manifests = list(yaml.safe_load_all((tmp_path / "k8s/batchline.yaml").read_text()))
    assert not [d for d in manifests if d["metadata"]["name"] == "redis"]
    (config,) = [d for d in manifests if d["kind"] == "ConfigMap"]
    assert config["data"]["REDIS_ADDRESSES"] == nodes
    assert config["data"]["REDIS_URL"] == "redis://10.0.0.1:6379"
    assert config["data"]["BATCHLINE_PARTITIONS"] == "6"
    keys = Keys()
    streams = set()
    for scaled in yaml.safe_load_all((tmp_path / "k8s/keda.yaml").read_text()):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis-cluster-streams"
            assert trigger["metadata"]["addressesFromEnv"] == "REDIS_ADDRESSES"
            streams.add(trigger["metadata"]["stream"])
    stages = {s for t in load_topologies(SETTINGS).values() for s in t.stages}
    assert streams == {
        keys.stream(p, stage, lane) for stage in stages for p in range(6) for lane in LANES
    }
