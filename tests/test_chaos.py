"""The chaos suite's quick scenarios (``python -m bench.chaos --quick``), smaller: real worker
processes and a real server each, with faults injected while jobs flow. Every accepted job
must end, and none may publish its result twice."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import Row, Timing, run_scenario, table
from bench.harness import Processes


@pytest.fixture(scope="module")
def lab_root() -> Iterator[tuple[Processes, Path]]:
    # A short folder (not pytest's tmp_path): a unix socket's path must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="chaos-") as path:
        root = Path(path)
        (root / "logs").mkdir()
        with Processes(root / "logs") as processes:
            yield processes, root


def run(name: str, n: int, lab_root: tuple[Processes, Path]) -> Row:
    processes, root = lab_root
    row = run_scenario(name, Timing.of(quick=True, n=n), processes, root)
    print(table([row]))
    assert row.error is None, row.error
    assert row.accepted == n * (3 if name.startswith("poison") else 1)
    assert row.lost == 0, "accepted jobs never ended"
    assert row.duplicate_results == 0, "a result was published twice"
    assert not row.problems, row.problems
    return row


def test_workers_sigkilled_every_half_second(lab_root: tuple[Processes, Path]) -> None:
    row = run("worker-sigkill", 1000, lab_root)
    assert row.faults >= 3, "the workers were not killed while jobs flowed"
    assert row.done + row.failed == row.accepted
    assert row.executions >= row.done


def test_redis_killed_and_restarted(lab_root: tuple[Processes, Path]) -> None:
    row = run("redis-kill", 1000, lab_root)
    assert row.faults >= 1, "the server was not killed"
    assert row.done == row.accepted


def test_poison_inputs_crash_supervised_workers(lab_root: tuple[Processes, Path]) -> None:
    """Three runs of 300 (no poison, then 1% poison twice) against ``batchline worker
    --processes 2``: each poison input crashes a worker max_deliveries (3) times, and only
    the poison inputs fail. (The throughput and p99 targets are the bench's, not a test's.)"""
    row = run("poison", 300, lab_root)
    assert row.accepted == 900
    assert (row.done, row.failed, row.dead_lettered) == (894, 6, 6)
    assert row.faults >= 6 * 3, "the poison inputs did not crash the workers"


def test_client_map_rides_out_a_redis_restart(lab_root: tuple[Processes, Path]) -> None:
    """A ``Client.map`` across a 2 s stop and start of the server: every result once, in
    order (the scenario checks the order; the row counts duplicates)."""
    row = run("map-redis-restart", 300, lab_root)
    assert row.faults == 1, "the server was not restarted"
    assert row.done == 300


def test_expired_jobs_never_reach_the_model(lab_root: tuple[Processes, Path]) -> None:
    row = run("deadlines", 300, lab_root)
    assert row.done + row.expired == 300
