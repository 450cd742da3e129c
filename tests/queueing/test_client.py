"""The blocking Client: submit (record + entry), idempotency, back-pressure, cancel, waiting
for results (own jobs and other clients' jobs), and map."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from queueing.client import Client, Job
from queueing.errors import (
    IdempotencyConflict,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    QueueFull,
    ResultTimeout,
    UnknownJob,
    UnknownPipeline,
)
from queueing.jobs import JobStatus
from queueing.keys import Keys, new_job_id
from queueing.message import Message, dumps
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from queueing.streams import Outcome
from queueing.waiters import RECHECK_S

from .helpers import (
    FakeWorker,
    job_hash,
    job_keys,
    pending,
    process,
    read_all,
    register,
    run,
    stage_queue,
)

STREAM = Keys().stream(0, "echo.run")


@pytest.fixture(scope="module")
def shared_client(redis_server: EmbeddedServer) -> Iterator[Client]:
    """One Client for the module's tests: closing one takes up to half a second (its listener
    thread polls), which adds up. It holds no state that a test could leak into the next but
    its spec cache, refreshed by ``client`` below."""
    settings = Settings(
        redis_url=redis_server.url,
        visibility_timeout_s=1.5,
        block_ms=200,
        pipelines=("pipelines.examples", "tests.pipelines"),
    )
    with Client(settings) as client:
        yield client


@pytest.fixture
def client(shared_client: Client, settings: Settings, redis_client: redis.Redis) -> Client:
    assert shared_client.core.settings == settings, "keep shared_client in step with conftest"
    register(redis_client, settings)
    shared_client.pipelines()  # forget the specs of earlier tests
    return shared_client


# -- submit ------------------------------------------------------------------------------


def test_submit_writes_a_queued_record_and_one_stream_entry(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    before = time.time()
    job = client.submit("echo", {"x": [1, 2]}, owner="alice")
    record = job_hash(redis_client, settings, job.id)
    assert record["status"] == "queued"
    assert record["pipeline"] == "echo"
    assert record["stage"] == "echo.run"
    assert record["owner"] == "alice"
    assert not record.get("deadline")
    assert record["reply"] == client.core.channel(0)
    assert before <= float(record["created_at"]) <= time.time()
    assert redis_client.ttl(Keys().job(job.id)) == -1  # a live job never expires

    entries = redis_client.xrange(STREAM)
    assert len(entries) == 1
    entry_id, fields = entries[0]
    message = Message.decode(fields)
    assert message.job_id == job.id
    assert message.value() == {"x": [1, 2]}
    assert message.deadline is None
    assert redis_client.hget(Keys().job(job.id), "entry") == entry_id

    info = job.info()
    assert info.status is JobStatus.QUEUED
    assert info.owner == "alice"
    assert info.deadline is None
    assert job.status() is JobStatus.QUEUED
    assert client.job(job.id).info() == info


def test_submit_with_a_timeout_carries_the_deadline(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    before = time.time()
    job = client.submit("echo", 1, timeout_s=30)
    deadline = float(job_hash(redis_client, settings, job.id)["deadline"])
    assert before + 30 <= deadline <= time.time() + 30
    ((_, fields),) = redis_client.xrange(STREAM)
    assert Message.decode(fields).deadline == deadline
    # An explicit earlier deadline wins over timeout_s.
    job = client.submit("echo", 2, timeout_s=30, deadline=before + 5)
    assert float(job_hash(redis_client, settings, job.id)["deadline"]) == before + 5


def test_a_bad_timeout_queues_nothing(client: Client, redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        client.submit("echo", 1, timeout_s=0)
    assert redis_client.xlen(STREAM) == 0


def test_submit_many_queues_each_input_as_its_own_job_in_order(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    jobs = client.submit_many("echo", [{"i": i} for i in range(5)])
    assert len({job.id for job in jobs}) == 5
    entries = redis_client.xrange(STREAM)
    assert [Message.decode(f).job_id for _, f in entries] == [job.id for job in jobs]
    assert [Message.decode(f).value() for _, f in entries] == [{"i": i} for i in range(5)]
    assert len(job_keys(redis_client, settings)) == 5


def test_unknown_pipeline_queues_nothing(client: Client, redis_client: redis.Redis) -> None:
    keys_before = redis_client.dbsize()
    with pytest.raises(UnknownPipeline, match="'nope'") as info:
        client.submit("nope", 1)
    assert info.value.name == "nope"
    assert isinstance(info.value, LookupError)
    assert redis_client.dbsize() == keys_before


def test_a_pipeline_registered_later_is_found(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    assert set(client.pipelines()) == {"echo"}
    register(redis_client, settings, "late")
    job = client.submit("late", 1)
    assert job_hash(redis_client, settings, job.id)["stage"] == "late.run"


@pytest.mark.parametrize("bad", ["", "nope", "0-xyz", "../etc/passwd", "0-" + "A" * 32])
def test_malformed_job_ids_are_unknown_jobs(client: Client, bad: str) -> None:
    with pytest.raises(UnknownJob):
        client.job(bad)
    with pytest.raises(UnknownJob):
        client.cancel(bad)


def test_well_formed_but_missing_job_ids_are_unknown_jobs(client: Client) -> None:
    missing = new_job_id(0)
    with pytest.raises(UnknownJob, match=missing):
        client.job(missing)
    with pytest.raises(UnknownJob):
        client.cancel(missing)
    with pytest.raises(UnknownJob):
        Job(client, missing).result(timeout=1)
    with pytest.raises(UnknownJob):
        Job(client, missing).info()


# -- idempotency -------------------------------------------------------------------------


def test_an_idempotency_key_returns_the_same_job(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    first = client.submit("echo", {"a": 1}, idempotency_key="order-17")
    again = client.submit("echo", {"a": 1}, idempotency_key="order-17")
    assert again.id == first.id
    assert redis_client.xlen(STREAM) == 1
    assert len(job_keys(redis_client, settings)) == 1
    other = client.submit("echo", {"a": 1}, idempotency_key="order-18")
    assert other.id != first.id
    # The retried handle waits like the first one.
    run(process(settings, "echo.run", 2, result=lambda v: v["a"] + 1))
    assert again.result(timeout=10) == 2
    # ... and a retry after the job finished still finds it.
    assert client.submit("echo", {"a": 1}, idempotency_key="order-17").result(timeout=1) == 2


def test_same_idempotency_key_with_another_input_conflicts(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    first = client.submit("echo", {"a": 1}, idempotency_key="k")
    with pytest.raises(IdempotencyConflict) as info:
        client.submit("echo", {"a": 2}, idempotency_key="k")
    assert info.value.job_id == first.id
    assert info.value.key == "k"
    assert redis_client.xlen(STREAM) == 1
    assert job_keys(redis_client, settings) == [Keys().job(first.id)]


def test_idempotency_keys_are_per_pipeline(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings, "other")
    a = client.submit("echo", 1, idempotency_key="k")
    b = client.submit("other", 2, idempotency_key="k")
    assert a.id != b.id


# -- back-pressure -----------------------------------------------------------------------


def test_queue_full_when_the_backlog_reaches_the_pipelines_limit(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings, "small", max_backlog=2)
    stream = Keys().stream(0, "small.run")
    with Client(settings) as client:
        client.submit("small", 1)
        client.submit("small", 2)
        with pytest.raises(QueueFull) as info:
            client.submit("small", 3)
        assert (info.value.pipeline, info.value.backlog, info.value.limit) == ("small", 2, 2)
        assert info.value.retry_after > 0
        assert redis_client.xlen(stream) == 2
        assert len(job_keys(redis_client, settings)) == 2  # nothing half-written
        # Once a worker has taken one off (XLEN is the backlog), there is room again.
        run(process(settings, "small.run", 1))
        assert redis_client.xlen(stream) == 1
        client.submit("small", 3)
        assert redis_client.xlen(stream) == 2


def test_queue_full_uses_the_deployment_default_without_a_pipeline_limit(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings)
    with Client(settings.replace(max_backlog=1)) as client:
        client.submit("echo", 1)
        with pytest.raises(QueueFull, match="limit 1"):
            client.submit("echo", 2)


def test_an_idempotent_retry_is_answered_even_when_the_queue_is_full(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings, "small", max_backlog=1)
    with Client(settings) as client:
        first = client.submit("small", 1, idempotency_key="k")
        assert client.submit("small", 1, idempotency_key="k").id == first.id


def test_submit_many_past_the_limit_queues_none(
    redis_client: redis.Redis, settings: Settings
) -> None:
    register(redis_client, settings, "small", max_backlog=3)
    with Client(settings) as client:
        client.submit_many("small", [1, 2])
        with pytest.raises(QueueFull):
            client.submit_many("small", [3, 4])
        assert redis_client.xlen(Keys().stream(0, "small.run")) == 2
        assert len(job_keys(redis_client, settings)) == 2
        client.submit("small", 3)  # what fits still goes in


def test_submit_many_across_partitions_queues_none_when_one_is_full(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """With two partitions a limit of 2 is one entry per partition; three inputs spread over
    both would put two in partition 0 (full) and one in partition 1 (room). submit_many raises
    QueueFull: the caller learns no job id, so no job of the call may be left to run (a
    retry would run it twice)."""
    settings = settings.replace(partitions=2)
    register(redis_client, settings, "small", max_backlog=2)
    with Client(settings) as client, pytest.raises(QueueFull):
        client.submit_many("small", [1, 2, 3])
    live = [
        key
        for key in job_keys(redis_client, settings)
        if redis_client.hget(key, "status") in (b"queued", b"running")
    ]
    assert live == []


def test_submit_many_with_a_conflicting_key_queues_none(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    """One input of a batch reuses an idempotency key with another input: submit_many raises
    IdempotencyConflict, so the caller learns no job id of the batch; none may be queued."""
    first = client.submit("echo", 1, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        client.submit_many("echo", [5, 2], idempotency_keys=[None, "k"])
    assert job_keys(redis_client, settings) == [Keys().job(first.id)]
    assert redis_client.xlen(STREAM) == 1


# -- cancel ------------------------------------------------------------------------------


def test_cancel_a_queued_job_and_it_never_runs(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.submit("echo", 1)
    assert job.cancel() is JobStatus.CANCELLED
    record = job_hash(redis_client, settings, job.id)
    assert record["status"] == "cancelled"
    assert "result" not in record
    assert 0 < redis_client.ttl(Keys().job(job.id)) <= settings.result_ttl_s
    with pytest.raises(JobCancelled):
        job.result(timeout=1)
    # The worker's START step says 'cancelled' (so it skips the job), and acks it.
    assert run(process(settings, "echo.run", 1)) == [(job.id, "cancelled")]
    assert redis_client.xlen(STREAM) == 0
    assert pending(redis_client, STREAM, "echo.run") == []
    assert job_hash(redis_client, settings, job.id)["status"] == "cancelled"
    assert client.cancel(job.id) is JobStatus.CANCELLED  # again: no change


def test_a_result_never_overwrites_a_cancel(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.submit("echo", 1)

    async def started_then_cancelled() -> None:
        async with stage_queue(settings, "echo.run") as queue:
            (delivery,) = await read_all(queue, 1)
            assert await queue.start([(delivery, job.id)]) == ["run"]
            assert job.status() is JobStatus.RUNNING
            assert client.cancel(job.id) is JobStatus.CANCELLED
            outcome = Outcome(delivery, job.id, "done", dumps("too late"))
            assert await queue.finish([outcome]) == [True]  # acked all the same

    run(started_then_cancelled())
    record = job_hash(redis_client, settings, job.id)
    assert record["status"] == "cancelled"
    assert "result" not in record
    assert redis_client.xlen(STREAM) == 0


def test_cancel_of_a_finished_job_changes_nothing(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.submit("echo", 5)
    run(process(settings, "echo.run", 1))
    assert client.cancel(job.id) is JobStatus.DONE
    assert job_hash(redis_client, settings, job.id)["status"] == "done"
    assert job.result(timeout=1) == 5


# -- results -----------------------------------------------------------------------------


def test_result_timeout_leaves_the_job_queued(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.submit("echo", 1)
    with pytest.raises(ResultTimeout) as info:
        job.result(timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, JobError)
    assert info.value.job_id == job.id
    assert job.status() is JobStatus.QUEUED
    assert redis_client.xlen(STREAM) == 1
    # The job goes on: a later wait gets its result.
    run(process(settings, "echo.run", 1, result=lambda v: v * 10))
    assert job.result(timeout=10) == 10


@pytest.mark.parametrize(
    ("kind", "error"), [("failed", JobFailed), ("expired", JobExpired), ("dead", JobFailed)]
)
def test_jobs_that_end_without_a_result_raise(
    client: Client, settings: Settings, kind: str, error: type[JobError]
) -> None:
    job = client.submit("echo", 1)
    run(process(settings, "echo.run", 1, kind=kind))
    with pytest.raises(error) as info:
        job.result(timeout=1)
    assert info.value.job_id == job.id
    if isinstance(info.value, JobFailed):
        assert info.value.stage == "echo.run"
        assert info.value.error == f"{kind} on purpose"
    assert job.info().status.finished


def _wait_until(predicate: Any, what: str, limit: float = 10.0) -> None:
    """Poll real state until ``predicate()`` holds (a liveness bound, not a speed check)."""
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


class _Waiter(threading.Thread):
    """``job.result()`` in a thread, keeping what it returned or raised."""

    def __init__(self, job: Job, timeout: float = 30) -> None:
        super().__init__(daemon=True)
        self.job = job
        self.timeout = timeout
        self.outcome: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.job.result(timeout=self.timeout)
        except BaseException as exc:
            self.error = exc


def test_result_wakes_up_when_the_job_finishes(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.submit("echo", 21)
    waiter = _Waiter(job)
    waiter.start()
    run(process(settings, "echo.run", 1, result=lambda v: v * 2))
    waiter.join(10)
    assert not waiter.is_alive()
    assert waiter.error is None
    assert waiter.outcome == 42


def test_result_of_a_job_submitted_by_another_client_wakes_up(
    client: Client, redis_client: redis.Redis, settings: Settings
) -> None:
    """The WATCH path: the second client adds its own channel to the job's record, and the
    end of the job is published there too."""
    job = client.submit("echo", "hi")
    with Client(settings) as other:
        handle = other.job(job.id)
        waiter = _Waiter(handle)
        waiter.start()
        _wait_until(
            lambda: other.core.channel(0) in job_hash(redis_client, settings, job.id)["reply"],
            "the second client to watch the job",
        )
        assert job_hash(redis_client, settings, job.id)["reply"].split() == [
            client.core.channel(0),
            other.core.channel(0),
        ]
        run(process(settings, "echo.run", 1, result=str.upper))
        waiter.join(10)
        assert not waiter.is_alive()
        assert waiter.error is None
        assert waiter.outcome == "HI"
        # Watching twice does not add the channel twice.
        assert other.job(job.id).result(timeout=1) == "HI"


def test_a_job_ending_between_the_record_read_and_the_wait_still_wakes_its_waiter(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job.result of another client's job WATCHes it (adding its channel, reading its status),
    then waits for a wake-up. Here the job ends (for real, through the protocol) right after
    that, and its wake-up reaches the listener before the waiter goes to sleep: it must not be
    lost. (A lost one leaves the waiter asleep until its re-check, 2 s later; the bound below
    is under it, so only a delivered wake-up passes.)"""
    job = client.submit("echo", 7)
    with Client(settings) as other:
        handle = other.job(job.id)  # another client's job: the WATCH path
        watch = Job._watch

        def watch_then_the_job_ends(self: Job) -> JobStatus:
            status = watch(self)
            run(process(settings, "echo.run", 1))
            time.sleep(0.3)  # let the listener thread take the wake-up in
            return status

        monkeypatch.setattr(Job, "_watch", watch_then_the_job_ends)
        waiter = _Waiter(handle, timeout=20)
        started = time.monotonic()
        waiter.start()
        waiter.join(8)
        assert time.monotonic() - started < 0.3 + RECHECK_S
        assert not waiter.is_alive(), "the waiter slept through its job's wake-up"
        assert waiter.error is None
        assert waiter.outcome == 7


def test_watching_a_finished_job_returns_at_once(client: Client, settings: Settings) -> None:
    job = client.submit("echo", 3)
    run(process(settings, "echo.run", 1))
    with Client(settings) as other:
        assert other.job(job.id).result(timeout=5) == 3


# -- map ---------------------------------------------------------------------------------


def test_map_yields_results_in_input_order(client: Client, settings: Settings) -> None:
    backlogs: list[int] = []
    with FakeWorker(settings, "echo.run", lambda v: v * 2, on_read=backlogs.append) as worker:
        results = list(client.map("echo", range(40), max_in_flight=7))
    assert results == [2 * i for i in range(40)]
    assert worker.processed == 40
    # Never more than max_in_flight of its jobs queued or in flight at once.
    assert backlogs
    assert max(backlogs) <= 7


def test_map_raises_a_failed_jobs_error_in_its_turn(client: Client, settings: Settings) -> None:
    def handler(value: int) -> int:
        if value == 3:
            raise ValueError("three is right out")
        return value

    got: list[int] = []

    def consume() -> None:
        for value in client.map("echo", range(6), max_in_flight=10):
            got.append(value)

    with FakeWorker(settings, "echo.run", handler), pytest.raises(JobFailed, match="right out"):
        consume()
    assert got == [0, 1, 2]


def test_map_refuses_a_bad_limit(client: Client) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        next(client.map("echo", [1], max_in_flight=0))


def test_map_of_nothing(client: Client) -> None:
    assert list(client.map("echo", [])) == []


def test_result_ttl_s_is_how_long_an_ended_job_is_kept(
    client: Client, settings: Settings, redis_client: redis.Redis
) -> None:
    short = client.submit("echo", 1, result_ttl_s=5)
    default = client.submit("echo", 2)
    cancelled = client.submit("echo", 3, result_ttl_s=7)
    cancelled.cancel()
    run(process(settings, "echo.run", 2))
    assert short.result(timeout=10) == 1
    assert default.result(timeout=10) == 2
    keys = Keys(settings.prefix)
    assert 0 < redis_client.ttl(keys.job(short.id)) <= 5
    assert 5 < redis_client.ttl(keys.job(default.id)) <= settings.result_ttl_s
    assert 0 < redis_client.ttl(keys.job(cancelled.id)) <= 7
    with pytest.raises(ValueError, match="result_ttl_s"):
        client.submit("echo", 4, result_ttl_s=0)
