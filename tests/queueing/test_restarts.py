"""Clients ride out a restart of Redis (issue 10.3): every call is retried while Redis is
unreachable, for up to ``Settings.retry_s``, and a SUBMIT sent again after a lost reply does not
queue its jobs twice. Against real servers: private ones that the tests stop and start again
(same socket and folder, AOF on), and the session's, blocked by a long script."""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

import pytest
import redis

from queueing.client import AsyncClient, Client, SubmitPlan
from queueing.client.retry import MAX_PAUSE_S, Backoff
from queueing.errors import BrokerUnavailable
from queueing.keys import Keys
from queueing.message import Message
from queueing.scripts import SUBMIT
from queueing.server import EmbeddedServer
from queueing.settings import Settings
from tests.support import Workers, assert_drained, stat
from tests.support import register as publish

from .helpers import job_hash, register, run
from .pipelines import SEEN_FILE, seen, t_restart

KEYS = Keys()
STREAM = KEYS.stream(0, "echo.run")
CLIENT_LOG = "queueing.client"


def _stream_jobs(r: redis.Redis, stream: str = STREAM) -> list[str]:
    return [Message.decode(fields).job_id for _, fields in r.xrange(stream)]


def _client_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CLIENT_LOG]


# -- the backoff ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pauses_double_up_to_the_cap_and_stop_when_the_time_is_spent() -> None:
    clock = Clock()
    backoff = Backoff(5.0, clock)
    error = ConnectionError("gone")
    pauses = []
    for _ in range(9):
        pauses.append(backoff.pause(error))
        clock.now += pauses[-1]
    with pytest.raises(BrokerUnavailable, match=r"retried for 5s, 10 attempts\): gone"):
        backoff.pause(error)
    assert pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, MAX_PAUSE_S, 1.0, 1.0, 0.45])
    assert sum(pauses) == pytest.approx(5.0)


def test_no_retry_time_means_the_first_outage_raises() -> None:
    with pytest.raises(BrokerUnavailable, match=r"^Redis is unreachable: gone$") as info:
        Backoff(0.0).pause(ConnectionError("gone"))
    assert isinstance(info.value.__cause__, ConnectionError)


# -- calls against a server that is not there --------------------------------------------------


def test_a_call_gives_up_once_retry_s_has_passed(tmp_path: Path) -> None:
    settings = Settings(redis_url=f"unix://{tmp_path / 'nothing.sock'}", retry_s=0.6)
    with Client(settings) as client:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"unreachable \(retried for 0.6s"):
            client.cancel("0-" + "0" * 32)
        assert 0.55 <= time.monotonic() - started < 1.5

    async def read_registry() -> None:
        async with AsyncClient(settings) as client:
            await client.pipelines()

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"retried for 0.6s"):
        run(read_registry())
    assert 0.55 <= time.monotonic() - started < 1.5


def test_retry_s_0_raises_at_once(tmp_path: Path) -> None:
    settings = Settings(redis_url=f"unix://{tmp_path / 'nothing.sock'}", retry_s=0)
    with Client(settings) as client:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"^Redis is unreachable: "):
            client.cancel("0-" + "0" * 32)
        assert time.monotonic() - started < 0.3


# -- restarts ---------------------------------------------------------------------------------


def _restart_later(server: EmbeddedServer, down_s: float) -> threading.Thread:
    """Stop the server now (SIGTERM: it writes out its AOF); start it again after ``down_s``."""
    server.stop()
    thread = threading.Thread(target=lambda: (time.sleep(down_s), server.start()), daemon=True)
    thread.start()
    return thread


def test_a_submit_while_the_server_restarts_waits_for_it(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=own_server.url, block_ms=100)
    r = redis.Redis.from_url(own_server.url)
    register(r, settings)
    r.close()
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    with Client(settings) as client:
        before = client.submit("echo", "before")
        restarting = _restart_later(own_server, 1.0)
        started = time.monotonic()
        during = client.submit_many("echo", ["during", "too"])
        assert time.monotonic() - started >= 0.5
        assert before.status().value == "queued"
        restarting.join(30)
    r = redis.Redis.from_url(own_server.url)
    try:
        assert _stream_jobs(r) == [before.id, *(job.id for job in during)]
        assert [job_hash(r, settings, job.id)["status"] for job in during] == ["queued"] * 2
    finally:
        r.close()
    messages = _client_log(caplog)
    assert any("batchline client: Redis is unreachable" in m for m in messages), messages
    assert any("batchline client: Redis answers again" in m for m in messages), messages


def test_map_rides_out_a_server_restart(
    own_server: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10.3: a map of 3,000 items used to raise BrokerUnavailable after ~800 when the
    server restarted for a second. Now it goes on: every result once, in input order, and every
    item reached the model once (a SUBMIT sent twice would queue its jobs twice)."""
    settings = Settings(
        redis_url=own_server.url,
        block_ms=100,
        visibility_timeout_s=10.0,  # longer than the restart: no entry is claimed meanwhile
        pipelines=("tests.queueing.pipelines",),
    )
    publish(settings, t_restart)
    seen_file = tmp_path / "seen"
    seen_file.touch()
    n = 3000
    results: list[object] = []
    down_at: list[int] = []  # how many results map had yielded when the server stopped

    def restart() -> None:
        own_server.stop()
        down_at.append(len(results))
        time.sleep(2.0)
        own_server.start()

    restarter = threading.Thread(target=restart, daemon=True)
    workers = Workers(settings)
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    try:
        workers.start("t_restart", **{SEEN_FILE: str(seen_file)})
        with Client(settings) as client:
            for result in client.map("t_restart", ({"x": i} for i in range(n))):
                results.append(result)
                if len(results) == 800:
                    restarter.start()
        restarter.join(30)
    finally:
        workers.close()

    assert down_at, "the server was not restarted"
    assert down_at[0] < n - 500, f"map had yielded {down_at[0]} results when the server stopped"
    assert results == [{"x": i} for i in range(n)]
    counts = collections.Counter(seen(seen_file))
    assert sorted(counts) == list(range(n)), "some items never reached the model"
    twice = {x: c for x, c in counts.items() if c > 1}
    assert not twice, f"items that reached the model more than once: {twice}"
    r = redis.Redis.from_url(own_server.url)
    try:
        assert stat(r, "t_restart.echo", "done") == n, "a result was published more than once"
        assert_drained(r, ["t_restart.echo"])
    finally:
        r.close()
    messages = _client_log(caplog)
    assert any("Redis is unreachable" in m for m in messages), "map never met the restart"


# -- a lost reply -----------------------------------------------------------------------------


BUSY = "local x = 0 for i = 1, tonumber(ARGV[1]) do x = x + 1 end return x"
"""A script that holds the server for as many loops as it is told. (Not a loop on TIME: a
script sees the time it started at.)"""


def _busy_loops(r: redis.Redis, seconds: float) -> int:
    """How many loops of BUSY hold this server for about ``seconds``."""
    probe = 5_000_000
    started = time.monotonic()
    r.eval(BUSY, 0, probe)
    return int(probe * seconds / max(time.monotonic() - started, 1e-3))


def _block_server(url: str, loops: int, started: threading.Event) -> None:
    """Hold the server in a script: commands sent meanwhile wait for it."""
    r = redis.Redis.from_url(url)
    try:
        started.set()
        r.eval(BUSY, 0, loops)
    finally:
        r.close()


def _wait_until_busy(url: str, timeout: float = 5.0) -> None:
    """Until the server has stopped answering (it runs the blocking script): a PING that gets
    no reply within 50 ms. (A fixed sleep was not enough with the tests run in parallel: the
    submit could reach the server before the script did.)"""
    probe = redis.Redis.from_url(
        url, socket_timeout=0.05, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    )
    limit = time.monotonic() + timeout
    try:
        while time.monotonic() < limit:
            try:
                probe.ping()
            except redis.TimeoutError:
                return
            time.sleep(0.005)
        raise AssertionError(f"the server was not held within {timeout}s")
    finally:
        probe.close()


def test_a_submit_sent_again_after_a_lost_reply_queues_its_jobs_once(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is held for 1 s; the client's reply timeout is 0.3 s. Its SUBMIT times out
    but stays in the server, which runs it once free; the attempts sent meanwhile are retries,
    which find the jobs queued and answer them as existing."""
    register(redis_client, settings)
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    with Client(settings) as client:
        # Every connection the client makes gives up on a reply after 0.3 s.
        client.redis.connection_pool.connection_kwargs["socket_timeout"] = 0.3
        warm = client.submit("echo", "warm-up")  # loads the script, subscribes the listener
        started = threading.Event()
        loops = _busy_loops(redis_client, 1.0)
        blocker = threading.Thread(
            target=_block_server, args=(settings.redis_url, loops, started), daemon=True
        )
        blocker.start()
        started.wait(5)
        _wait_until_busy(settings.redis_url)
        jobs = client.submit_many("echo", ["a", "b", "c"])
        blocker.join(10)
        # Answered as existing: the first attempt ran, the retry found its jobs.
        assert [job._watched for job in jobs] == [False] * 3, "no attempt found them queued"
        assert [job.status().value for job in jobs] == ["queued"] * 3
    assert _stream_jobs(redis_client) == [warm.id, *(job.id for job in jobs)]
    messages = _client_log(caplog)
    assert any("Redis is unreachable" in m for m in messages), messages


def _run_submit(redis_client: redis.Redis, plan: SubmitPlan, *, retry: bool) -> list[object]:
    script = redis_client.register_script(SUBMIT)
    (call,) = plan.calls
    keys, args = call.pack(retry=retry)
    reply: list[object] = script(keys=keys, args=args)
    return reply


def _plan(client: Client, n: int, keys: list[str | None] | None = None) -> SubmitPlan:
    plan = SubmitPlan(client.core)
    plan.add(client.pipeline("echo"), list(range(n)), idempotency_keys=keys)
    return plan


def test_submit_marked_as_a_retry_answers_the_jobs_it_queued_before(
    client: Client, settings: Settings, redis_client: redis.Redis
) -> None:
    register(redis_client, settings, max_backlog=3)
    plan = _plan(client, 3)
    first = plan.results([_run_submit(redis_client, plan, retry=False)])
    again = plan.results([_run_submit(redis_client, plan, retry=True)])
    ids = [job.id for job in plan.calls[0].groups[0]]
    assert first == [[(job_id, True) for job_id in ids]]
    # The backlog is at its limit (3), but nothing new is queued: no QueueFull.
    assert again == [[(job_id, False) for job_id in ids]]
    assert _stream_jobs(redis_client) == ids


def test_a_retry_queues_what_the_first_attempt_did_not(
    client: Client, settings: Settings, redis_client: redis.Redis
) -> None:
    register(redis_client, settings)
    plan = _plan(client, 2, ["k0", None])
    assert plan.results([_run_submit(redis_client, plan, retry=True)]) == [
        [(job.id, True) for job in plan.calls[0].groups[0]]
    ]
    again = _run_submit(redis_client, plan, retry=True)  # keyed: named by its key, and made
    assert plan.results([again]) == [[(job.id, False) for job in plan.calls[0].groups[0]]]
    assert len(_stream_jobs(redis_client)) == 2


def test_without_the_retry_mark_a_second_run_would_queue_again(
    client: Client, settings: Settings, redis_client: redis.Redis
) -> None:
    """Why a retry must say so: the script cannot tell a retry from a first attempt."""
    register(redis_client, settings)
    plan = _plan(client, 2)
    _run_submit(redis_client, plan, retry=False)
    _run_submit(redis_client, plan, retry=False)
    assert len(_stream_jobs(redis_client)) == 4
