"""Live settings: ``batchline config set`` changes a running worker's batching (no restart),
the registry shows the values in force and since when, and bad values are refused."""

from __future__ import annotations

import asyncio

import redis

from queueing.client import Client
from queueing.connection import connect_async
from queueing.jobs import JobStatus
from queueing.live_config import set_settings, stage_spec
from queueing.registry import StageSpec
from queueing.settings import Settings
from tests.support import Workers
from tests.workers.batching_pipelines import t_live
from tests.workers.support import (
    batches,
    batchline_config,
    register,
    wait_finished,
    wait_until,
)

STAGE = "t_live.model"
PIPELINES = ("tests.workers.batching_pipelines",)


def test_a_running_worker_applies_a_new_max_batch_size(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_live)
    workers.start(STAGE, settings=settings)
    first = client.submit_many("t_live", [{"x": i} for i in range(6)])
    assert [r.status for r in wait_finished(first, 20)] == [JobStatus.DONE] * 6
    assert max(batches(redis_client, STAGE)) <= 2, "declared: batches of at most 2"

    done = batchline_config(settings, "set", STAGE, "max_batch_size=6", "max_latency_ms=30")
    assert done.returncode == 0, done.stderr
    assert "max_batch_size:       6" in done.stdout
    assert "live since" in done.stdout

    [spec] = client.pipelines()["t_live"].stages  # read afresh
    assert spec.max_batch_size == 6
    assert spec.max_latency_ms == 30
    assert spec.settings_since is not None

    # Six items queued at once run as one batch once the worker has applied the change.
    def gathered() -> bool:
        jobs = client.submit_many("t_live", [{"x": i} for i in range(6)])
        wait_finished(jobs, 20)
        return max(batches(redis_client, STAGE)) > 2

    wait_until(gathered, 15, "the running worker to batch with max_batch_size=6")
    assert max(batches(redis_client, STAGE)) <= 6

    shown = batchline_config(settings, "show", STAGE)
    assert shown.returncode == 0
    assert "max_batch_size:       6" in shown.stdout
    reset = batchline_config(settings, "reset", STAGE)
    assert reset.returncode == 0
    assert "as declared in code" in reset.stdout
    [spec] = client.pipelines()["t_live"].stages
    assert (spec.max_batch_size, spec.settings_since) == (2, None)


def test_bad_values_are_refused_with_a_clear_error(settings: Settings) -> None:
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_live)
    for args, message in [
        (("max_batch_size=0",), "max_batch_size must be >= 1"),
        (("max_batch_size=many",), "max_batch_size: 'many' is not a number"),
        (("batch_wait_timeout_s=-1",), "batch_wait_timeout_s must be >= 0"),
        (("batch_wait_timeout_s=inf",), "batch_wait_timeout_s must be >= 0"),
        (("max_latency_ms=0",), "max_latency_ms must be a number > 0"),
        (("colour=red",), "unknown setting 'colour'"),
        (("max_batch_size",), "expected NAME=VALUE"),
    ]:
        done = batchline_config(settings, "set", STAGE, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    unknown = batchline_config(settings, "set", "t_live.nope", "max_batch_size=4")
    assert unknown.returncode == 2
    assert "unknown stage 't_live.nope'" in unknown.stderr
    nowhere = batchline_config(settings, "set", "nope.model", "max_batch_size=4")
    assert nowhere.returncode == 2
    assert "unknown pipeline 'nope'" in nowhere.stderr


def test_settings_written_at_once_are_merged_not_lost(settings: Settings) -> None:
    """Each writer reads, merges and writes the stage's settings: two at once must both land
    (a compare and set: the second reads again)."""
    settings = settings.replace(pipelines=PIPELINES)
    register(settings, t_live)
    writes = [
        {"max_batch_size": 5},
        {"batch_wait_timeout_s": 0.25},
        {"lane_weights": [9, 3, 1]},
        {"max_latency_ms": 40.0},
    ]

    async def write_all() -> StageSpec:
        client = connect_async(settings)
        try:
            await asyncio.gather(*(set_settings(client, settings, STAGE, w) for w in writes))
            return await stage_spec(client, settings, STAGE)
        finally:
            await client.aclose()

    spec = asyncio.run(write_all())
    assert spec.max_batch_size == 5
    assert spec.batch_wait_timeout_s == 0.25
    assert tuple(spec.lane_weights) == (9, 3, 1)
    assert spec.max_latency_ms == 40.0
