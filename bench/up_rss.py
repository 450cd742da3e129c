"""Memory of ``batchline up`` per ``--workers`` mode: starts it, runs each pipeline's example
once through the gateway (so that every model is loaded and has run), then sums the resident
memory (VmRSS; and PSS, which splits shared pages among their users) of its processes by
kind. One mode after the other, a fresh server each.

    python -m bench.up_rss [--modes per-stage,per-pipeline,one] [--pipelines pipelines.examples]

Prints one JSON line per mode and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

START_S = 300.0


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _tree(pid: int) -> list[int]:
    found = [pid]
    for child in _children(pid):
        found += _tree(child)
    return found


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries) split among their users, so
    that the sum over processes is what they take together (RSS counts them in each)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _kind(pid: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [w.decode() for w in cmd if w]
    if "worker" in words:
        return "workers"
    if "web" in words:
        return "web"
    if any("server" in w for w in words[:1]):
        return "redis"
    return "up"


def measure(mode: str, pipelines: str, port: int) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="bl-rss-")
    env = {
        **os.environ,
        "BATCHLINE_DATA_DIR": data,
        "BATCHLINE_PIPELINES": pipelines,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    log = open(Path(data) / "up.log", "wb")  # noqa: SIM115 (closed below)
    up = subprocess.Popen(
        [sys.executable, "-m", "batchline", "up", "--workers", mode, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        limit = time.monotonic() + START_S
        docs: list[dict[str, Any]] = []
        while time.monotonic() < limit:
            try:
                docs = _get(f"{base}/v1/pipelines")["pipelines"]
                if docs and all(s["workers"] for doc in docs for s in doc["stages"]):
                    break
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        else:
            raise SystemExit(f"{mode}: not every pipeline had a worker in {START_S:g}s")
        started = time.monotonic() - (limit - START_S)
        for doc in docs:
            answer = _post(f"{base}/v1/pipelines/{doc['name']}", {"input": doc["example"]})
            assert answer["status"] == "done", answer
        time.sleep(1)
        by_kind: dict[str, int] = {}
        pss: dict[str, int] = {}
        pids = _tree(up.pid)
        workers = 0
        for pid in pids:
            kind = _kind(pid)
            workers += kind == "workers"
            by_kind[kind] = by_kind.get(kind, 0) + _rss_kib(pid)
            pss[kind] = pss.get(kind, 0) + _pss_kib(pid)
        return {
            "mode": mode,
            "worker_processes": workers,
            "rss_mib": {k: round(v / 1024) for k, v in sorted(by_kind.items())},
            "total_mib": round(sum(by_kind.values()) / 1024),
            "pss_mib": {k: round(v / 1024) for k, v in sorted(pss.items())},
            "total_pss_mib": round(sum(pss.values()) / 1024),
            "ready_s": round(started, 1),
        }
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="per-stage,per-pipeline,one")
    parser.add_argument("--pipelines", default="pipelines.examples")
    parser.add_argument("--port", type=int, default=18740)
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        row = measure(mode, args.pipelines, args.port)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'mode':<14}{'workers':>8}{'RSS MiB':>9}{'PSS MiB':>9}{'ready s':>9}")
    for row in rows:
        print(
            f"{row['mode']:<14}{row['worker_processes']:>8}{row['total_mib']:>9}"
            f"{row['total_pss_mib']:>9}{row['ready_s']:>9}"
        )


if __name__ == "__main__":
    main()
