"""Durability: an accepted job survives a restart of the server (AOF on), and, with
``durable_submit``, a crash (SIGKILL) right after ``submit`` returned.

Each test runs its own server (an EmbeddedServer in tmp_path, the same binary as the session's,
so CI runs these against redis-server 7.0 too)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from queueing.client import Client
from queueing.errors import BatchlineError, BrokerUnavailable, ConfigError
from queueing.jobs import JobStatus
from queueing.keys import Keys
from queueing.message import Message
from queueing.server import EmbeddedServer
from queueing.settings import Settings

from .helpers import (
    SERVER_BINARY,
    done,
    has_waitaof,
    job_hash,
    job_of,
    pending,
    process,
    read_all,
    register,
    run,
    stage_queue,
)

KEYS = Keys()
STAGE = "echo.run"
STREAM = KEYS.stream(0, STAGE)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "srv"  # short: a unix socket path has a ~100 character limit


@pytest.fixture
def own_server(data_dir: Path) -> Iterator[EmbeddedServer]:
    """A private server; the test may stop, kill and restart it (``server.start()``)."""
    server = EmbeddedServer(data_dir, SERVER_BINARY)
    server.start()
    yield server
    server.stop()


def _settings(server: EmbeddedServer, **changes: object) -> Settings:
    return Settings(redis_url=server.url, block_ms=100, visibility_timeout_s=0.05).replace(
        **changes
    )


def _connect(server: EmbeddedServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_queued_and_in_flight_jobs_survive_a_restart(own_server: EmbeddedServer) -> None:
    settings = _settings(own_server)
    r = _connect(own_server)
    register(r, settings)
    with Client(settings) as client:
        in_flight = client.submit("echo", "taken")
        queued = [client.submit("echo", i) for i in range(3)]

    async def read_one_and_crash() -> str:
        async with stage_queue(settings, STAGE, "crashed") as queue:
            (delivery,) = await read_all(queue, 1)
            assert job_of(delivery) == in_flight.id
            await queue.start([(delivery, in_flight.id)])
            return delivery.entry_id

    taken_entry = run(read_one_and_crash())
    before = {job.id: job_hash(r, settings, job.id) for job in [in_flight, *queued]}
    r.close()

    own_server.stop()  # SIGTERM: the server writes out its AOF and exits
    own_server.start()  # same data dir: it replays the AOF

    r = _connect(own_server)
    try:
        after = {job_id: job_hash(r, settings, job_id) for job_id in before}
        assert after == before
        assert [after[job.id]["status"] for job in queued] == ["queued"] * 3
        assert after[in_flight.id]["status"] == "running"
        assert r.xlen(STREAM) == 4
        assert [Message.decode(f).job_id for _, f in r.xrange(STREAM)] == [
            in_flight.id,
            *[job.id for job in queued],
        ]
        ((p),) = pending(r, STREAM, STAGE)  # the consumer group and its pending list too
        assert (p["message_id"].decode(), p["consumer"]) == (taken_entry, b"crashed")
        assert r.hexists(KEYS.registry, "echo")

        # ... and every one of them can still be processed.
        async def recover() -> None:
            async with stage_queue(settings, STAGE, "survivor") as queue:
                claimed, dead = await queue.claim(10)
                assert dead == 0
                assert [d.entry_id for d in claimed] == [taken_entry]
                assert await queue.start([(claimed[0], in_flight.id)]) == ["run"]
                assert await queue.finish([done(claimed[0], "recovered")]) == [True]

        run(recover())
        assert [job_id for job_id, _ in run(process(settings, STAGE, 3))] == [
            job.id for job in queued
        ]
        with Client(settings) as client:
            assert client.job(in_flight.id).result(timeout=5) == "recovered"
            assert [client.job(job.id).result(timeout=5) for job in queued] == [0, 1, 2]
        assert r.xlen(STREAM) == 0
    finally:
        r.close()


def test_a_durable_submit_survives_a_crash(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL right after submit returned, then restart: the job is there.

    With WAITAOF (Redis >= 7.2, Valkey) the server runs the default ``appendfsync everysec``
    and the guarantee comes from the client: submit returns only once WAITAOF says the AOF is
    fsynced. A server without WAITAOF (Debian's redis-server 7.0) makes the client warn and
    fall back to the server's own setting, so there the server runs ``appendfsync always``,
    which fsyncs every write before replying: the deployment a 7.0 user must choose."""
    probe = EmbeddedServer(data_dir, SERVER_BINARY).start()
    try:
        r = _connect(probe)
        waitaof = has_waitaof(r)
        r.close()
    finally:
        probe.stop()
    server = EmbeddedServer(
        data_dir, SERVER_BINARY, appendfsync="everysec" if waitaof else "always"
    ).start()
    try:
        settings = _settings(server, durable_submit=True)
        r = _connect(server)
        register(r, settings)
        r.config_resetstat()
        r.close()
        with caplog.at_level(logging.WARNING, logger="queueing.client"):
            with Client(settings) as client:
                job = client.submit("echo", {"keep": "me"})
                again = client.submit("echo", {"and": "me"})
                client_kept_waitaof = client.core.waitaof
                r = _connect(server)
                calls = r.info("commandstats").get("cmdstat_waitaof", {}).get("calls", 0)
                r.close()
            server.kill()  # SIGKILL: no shutdown, no final fsync
        if waitaof:
            assert client_kept_waitaof
            assert calls == 2
            assert "WAITAOF" not in caplog.text
        else:
            assert not client_kept_waitaof
            assert "no WAITAOF" in caplog.text
            # The fallback is remembered: one warning, not one per submit.
            assert caplog.text.count("no WAITAOF") == 1

        server.start()
        r = _connect(server)
        try:
            for kept in (job, again):
                assert job_hash(r, settings, kept.id)["status"] == "queued"
            assert [Message.decode(f).job_id for _, f in r.xrange(STREAM)] == [job.id, again.id]
        finally:
            r.close()
        run(process(settings, STAGE, 2))
        with Client(settings) as client:
            assert client.job(job.id).result(timeout=5) == {"keep": "me"}
            assert client.job(job.id).status() is JobStatus.DONE
    finally:
        server.stop()


def test_a_durable_submit_needs_aof_on_the_server(own_server: EmbeddedServer) -> None:
    r = _connect(own_server)
    try:
        if not has_waitaof(r):
            pytest.skip("this server has no WAITAOF; the fallback is tested above")
        settings = _settings(own_server, durable_submit=True)
        register(r, settings)
        r.config_set("appendonly", "no")
        with Client(settings) as client, pytest.raises(ConfigError, match="AOF"):
            client.submit("echo", 1)
    finally:
        r.close()


def test_a_durable_submit_is_not_confirmed_without_an_fsync(data_dir: Path) -> None:
    """With ``appendfsync no`` the server never fsyncs on its own, so WAITAOF times out and
    answers that 0 local fsyncs happened. A durable submit must not then return as if the job
    were safe on disk (it must say so with an error)."""
    server = EmbeddedServer(data_dir, SERVER_BINARY, appendfsync="no").start()
    r = _connect(server)
    try:
        if not has_waitaof(r):
            pytest.skip("this server has no WAITAOF")
        settings = _settings(server, durable_submit=True)
        register(r, settings)
        with Client(settings) as client, pytest.raises(BatchlineError) as info:
            client.submit("echo", 1)
        # The server answered (WAITAOF said: 0 fsyncs); it is not "unreachable". (redis-py's
        # default 5 s socket timeout races WAITAOF's 5 s timeout, so without this check the
        # test would pass by accident about half of the time.)
        assert not isinstance(info.value, BrokerUnavailable), info.value
    finally:
        r.close()
        server.stop()
