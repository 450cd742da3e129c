"""Bulk inference of a file: real ``rq worker batchline-bulk`` processes, real batchline workers,
the real server. A SIGKILLed rq worker's job resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from batchline.cli import main
from queueing.bulk import KEEP_S, QUEUE, BulkSpec, Progress, fetch, list_documents, prune_uploads
from queueing.errors import ConfigError
from queueing.settings import Settings
from tests.bulk_pipelines import GATE, t_gate
from tests.conftest import ROOT, worker_env
from tests.support import Workers, children, register, wait_exit, wait_until
from workers.bulk import count_rows

SEEN = "test:seen:t_gate.model"


@pytest.fixture
def bulk_settings(settings: Settings) -> Settings:
    return settings.replace(pipelines=("tests.bulk_pipelines",))


class RqWorkers:
    """Real ``rq worker batchline-bulk`` processes, each in its own process group. A plain rq
    worker forks a work horse per job into a process group of its own (``os.setpgrp``):
    :meth:`kill` kills both, as a lost machine would (killing the worker's group alone left
    the horse running the job to its end)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *, burst: bool = True) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "rq.cli", "worker", QUEUE, "--url"]
        command += [self.settings.redis_url or "", "--logging_level", "WARNING"]
        if burst:
            command.append("--burst")
        env = worker_env(self.settings)
        process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        horses = children(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for horse in horses:
            with contextlib.suppress(ProcessLookupError):
                os.kill(horse, signal.SIGKILL)
        process.wait(10)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def rq_workers(bulk_settings: Settings) -> Iterator[RqWorkers]:
    pool = RqWorkers(bulk_settings)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def served(bulk_settings: Settings, workers: Workers) -> Settings:
    """t_gate registered and served by a real batchline worker."""
    register(bulk_settings, t_gate)
    workers.start("t_gate", settings=bulk_settings)
    return bulk_settings


def bulk(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``batchline bulk ...`` (in this process); what it printed."""
    assert main(["bulk", *args, "--redis-url", settings.redis_url or ""]) == 0
    return capsys.readouterr().out


def run_id(out: str) -> str:
    return out.split()[0]


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def progress(r: redis.Redis, bulk_id: str) -> Progress:
    return Progress.from_meta(fetch(r, bulk_id).get_meta(refresh=True))


def test_a_file_in_input_order_with_its_failures_aside_and_a_schedule(
    served: Settings,
    rq_workers: RqWorkers,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    rows = [orjson.dumps({"x": i, "fail": i == 11}) for i in range(300)]
    rows[7] = b"{not json"
    source.write_bytes(b"\n".join(rows[:50]) + b"\n\n" + b"\n".join(rows[50:]) + b"\n")
    table = tmp_path / "in.csv"
    table.write_text("x,name\n" + "".join(f"{i},n{i}\n" for i in range(5)))

    out = tmp_path / "out.jsonl"
    first = run_id(bulk(served, capsys, "run", "t_gate", str(source), "-o", str(out)))
    csv_out = tmp_path / "csv.jsonl"
    second = run_id(
        bulk(served, capsys, "run", "t_gate", str(table), "-o", str(csv_out), "--every", "1h")
    )
    later = run_id(
        bulk(served, capsys, "run", "t_gate", str(table), "-o", str(csv_out), "--in", "2h")
    )
    assert wait_exit(rq_workers.start(), 30, "rq worker") == 0

    results = lines(out)
    assert [r["row"] for r in results] == [i for i in range(300) if i not in (7, 11)]
    assert all(r["result"] == {"x": r["row"], "y": 2 * r["row"]} for r in results)
    failures = {f["row"]: f for f in lines(Path(str(out) + ".failed.jsonl"))}
    assert sorted(failures) == [7, 11]
    assert "not JSON" in failures[7]["error"]
    assert failures[7]["input"] == "{not json"
    assert "bad input x=11" in failures[11]["error"]
    assert failures[11]["input"]["x"] == 11
    assert [r["result"] for r in lines(csv_out)] == [{"x": i, "y": 2 * i} for i in range(5)]

    status = bulk(served, capsys, "status", first)
    assert "298 done, 2 failed" in status
    assert "(done)" in status
    assert "100%" in status
    docs = {d["id"]: d for d in list_documents(redis_client)}
    assert docs[first]["state"] == "done"
    assert docs[first]["total"] == 300
    assert docs[later]["state"] == "scheduled"
    # --every: the run that ended scheduled the next one
    again = [d for d in docs.values() if d["every_s"] and d["id"] != second]
    assert [d["state"] for d in again] == ["scheduled"]
    listing = bulk(served, capsys, "list")
    assert first in listing
    assert later in listing
    assert "every 3600s" in listing
    assert "batchline bulk t_gate" in str(fetch(redis_client, first).description)


def test_a_killed_rq_worker_leaves_a_job_that_resumes_from_its_checkpoint(
    served: Settings,
    rq_workers: RqWorkers,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    # Rows from 200 on wait for the gate: the job cannot finish before it is killed.
    source.write_bytes(
        b"".join(orjson.dumps({"x": i, "hold": i >= 200}) + b"\n" for i in range(300))
    )
    out = tmp_path / "out.jsonl"
    bulk_id = run_id(
        bulk(
            served,
            capsys,
            *("run", "t_gate", str(source), "-o", str(out)),
            *("--checkpoint-rows", "50", "--max-in-flight", "64"),
        )
    )
    worker = rq_workers.start(burst=False)
    wait_until(
        lambda: progress(redis_client, bulk_id).checkpoint.get("rows", 0) >= 150,
        30,
        "a checkpoint at row 150",
    )
    rq_workers.kill(worker)
    before = progress(redis_client, bulk_id)
    kept = before.checkpoint["rows"]
    assert before.state == "running"
    assert 150 <= kept < 300

    # What rq's maintenance does once the dead worker's heartbeat has lapsed (its clock is
    # moved on here): the abandoned job is retried at once (Retry, first interval 0).
    StartedJobRegistry(queue=Queue(QUEUE, connection=redis_client)).cleanup(2**40)
    redis_client.set(GATE, 1)
    assert wait_exit(rq_workers.start(), 30, "rq worker") == 0

    after = progress(redis_client, bulk_id)
    assert after.state == "done"
    assert after.runs == 2
    assert after.done == 300
    results = lines(out)
    assert [r["row"] for r in results] == list(range(300))  # each row once, in order
    seen = Counter(int(x) for x in redis_client.lrange(SEEN, 0, -1))
    # What the checkpoint had written was not run again.
    assert all(seen[x] == 1 for x in range(kept)), [x for x in range(kept) if seen[x] != 1]
    assert all(seen[x] >= 1 for x in range(300))


def test_cancel_stops_a_running_job_and_its_queued_items_never_run(
    served: Settings,
    rq_workers: RqWorkers,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"".join(orjson.dumps({"x": i, "hold": i >= 100}) + b"\n" for i in range(2000))
    )
    out = tmp_path / "out.jsonl"
    bulk_id = run_id(
        bulk(
            served,
            capsys,
            *("run", "t_gate", str(source), "-o", str(out)),
            *("--checkpoint-rows", "10", "--max-in-flight", "300"),
        )
    )
    worker = rq_workers.start()
    wait_until(lambda: progress(redis_client, bulk_id).rows >= 50, 30, "50 rows written")
    # Row 100's batch holds the model; the rows after it wait in the stream, unrun.
    assert "cancel requested" in bulk(served, capsys, "cancel", bulk_id)
    assert wait_exit(worker, 30, "rq worker") == 0

    assert progress(redis_client, bulk_id).state == "cancelled"
    assert "(cancelled)" in bulk(served, capsys, "status", bulk_id)
    statuses = Counter(
        redis_client.hget(key, "status") for key in redis_client.scan_iter("bl:{0}:job:*")
    )
    assert statuses[b"cancelled"] > 100  # the jobs it had in flight were cancelled...
    assert all(r["row"] < 100 for r in lines(out))
    redis_client.set(GATE, 1)
    wait_until(lambda: redis_client.xlen("bl:{0}:in:t_gate.model") == 0, 10, "stream drained")
    seen = [int(x) for x in redis_client.lrange(SEEN, 0, -1)]
    assert max(seen) < 100 + 8  # ... and never reached the model (but the held batch)
    assert statuses[b"queued"] == statuses[b"running"] == 0


def test_cancel_a_queued_job_before_it_runs(
    bulk_settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"x": 1}\n')
    out = tmp_path / "out.jsonl"
    bulk_id = run_id(bulk(bulk_settings, capsys, "run", "t_gate", str(source), "-o", str(out)))
    at = bulk(
        bulk_settings,
        capsys,
        "run",
        "t_gate",
        str(source),
        "-o",
        str(out),
        "--at",
        "2099-01-01T02:00",
    )
    assert "queued at 2099-01-01T02:00:00+00:00" in at
    bulk(bulk_settings, capsys, "cancel", bulk_id)
    bulk(bulk_settings, capsys, "cancel", run_id(at))
    assert Queue(QUEUE, connection=redis_client).count == 0
    docs = {d["id"]: d for d in list_documents(redis_client)}
    assert docs[bulk_id]["state"] == "cancelled"
    assert docs[run_id(at)]["state"] == "cancelled"
    assert not out.exists()


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed: this checks the message when it is missing")
    spec = BulkSpec(
        pipeline="t_gate", input=str(tmp_path / "x.parquet"), output="o", format="parquet"
    )
    with pytest.raises(ConfigError, match=r"batchline\[parquet\]"):
        count_rows(spec)


def test_upload_folders_past_their_keep_time_are_pruned(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "input.jsonl").write_text("1\n")
    long_ago = time.time() - KEEP_S - 60
    for path in (old, old / "input.jsonl"):
        os.utime(path, (long_ago, long_ago))
    assert prune_uploads(tmp_path) == ["old"]
    assert not old.exists()
    assert (new / "input.jsonl").exists()
