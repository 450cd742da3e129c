"""Redis being away: the one definition of "unreachable" (REDIS_DOWN), the outage log that
retrying loops share, waiting at start-up for a server that is loading its AOF, and the probe
of a server's socket. Against real servers (a private one for loading and dying)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from queueing.connection import (
    REDIS_DOWN,
    OutageLog,
    broker_errors,
    connect_async,
    is_loading,
    wait_until_ready,
)
from queueing.errors import BrokerUnavailable
from queueing.server import EmbeddedServer, server_answers
from queueing.settings import Settings
from tests.loading import finish_loading, pad_and_stop, start_loading

from .helpers import run

LOGGER = "tests.outages"


@pytest.fixture
def loading_server(own_server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """A private server that answers LOADING until the test calls ``finish_loading``."""
    client = redis.Redis.from_url(own_server.url)
    client.set("test:kept", "yes")
    client.close()
    pad_and_stop(own_server)
    start_loading(own_server)
    yield own_server
    own_server.kill()  # do not wait for it to load the rest


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# -- REDIS_DOWN -------------------------------------------------------------------------------


def test_a_loading_server_and_a_missing_one_are_both_down(
    loading_server: EmbeddedServer, tmp_path: Path
) -> None:
    errors: list[Exception] = []
    for url in (loading_server.url, f"unix://{tmp_path / 'nothing.sock'}"):
        client = redis.Redis.from_url(url, retry=None)
        try:
            client.get("test:kept")
        except Exception as exc:
            errors.append(exc)
        finally:
            client.close()
    loading, missing = errors
    assert isinstance(loading, REDIS_DOWN)
    assert is_loading(loading)
    assert isinstance(missing, REDIS_DOWN)
    assert not is_loading(missing)
    for exc in errors:
        with pytest.raises(BrokerUnavailable, match="unreachable"), broker_errors():
            raise exc


def test_a_command_error_is_not_an_outage(redis_client: redis.Redis) -> None:
    redis_client.set("test:string", "x")
    with pytest.raises(redis.exceptions.ResponseError) as info:
        redis_client.lpush("test:string", "y")  # WRONGTYPE
    assert not isinstance(info.value, REDIS_DOWN)


# -- OutageLog --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _real_outage(tmp_path: Path) -> Exception:
    """The error redis-py raises for a server that is not there."""
    client = redis.Redis(unix_socket_path=str(tmp_path / "gone.sock"), retry=None)
    try:
        client.ping()
    except Exception as exc:
        return exc
    finally:
        client.close()
    raise AssertionError("a missing server answered")


def test_an_outage_is_logged_once_then_rarely_then_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    outage = OutageLog(
        logging.getLogger(LOGGER), "stage s: heartbeat", repeat_s=10, max_repeat_s=40, clock=clock
    )
    down = _real_outage(tmp_path)
    for _ in range(1200):  # 10 minutes of failures, two per second
        clock.now += 0.5
        outage.failed(down)
    records = _lines(caplog)
    first, *repeats = records
    assert first.levelno == logging.WARNING
    assert first.exc_info is None, "an outage is logged without a traceback"
    assert "stage s: heartbeat: Redis is unreachable" in first.getMessage()
    # After 10, 30, 70 s, then every 40 s (the cap) until 600 s: 3 + 13 lines.
    assert 14 <= len(repeats) <= 18, [r.getMessage() for r in repeats]
    assert all(r.exc_info is None and "still failing" in r.getMessage() for r in repeats)
    assert outage.failing

    caplog.clear()
    outage.succeeded()
    outage.succeeded()
    (back,) = _lines(caplog)
    assert "Redis answers again after 599.5s and 1200 failed attempts" in back.getMessage()
    assert not outage.failing


def test_a_new_outage_after_recovery_is_logged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = OutageLog(logging.getLogger(LOGGER), "beat", clock=Clock())
    down = _real_outage(tmp_path)
    for _ in range(2):
        outage.failed(down)
        outage.failed(down)
        outage.succeeded()
    messages = [r.getMessage() for r in _lines(caplog)]
    assert len(messages) == 4
    assert "unreachable" in messages[0]
    assert "answers again" in messages[1]
    assert "unreachable" in messages[2]


def test_an_unexpected_error_is_logged_with_its_traceback_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    outage = OutageLog(logging.getLogger(LOGGER), "beat", clock=clock)
    for _ in range(5):
        clock.now += 0.1
        with outage.guard():
            raise KeyError("bug")
    (record,) = _lines(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)
    caplog.clear()
    with outage.guard():
        pass
    (back,) = _lines(caplog)
    assert "works again" in back.getMessage()


def test_guard_swallows_a_real_outage_and_ends_it_on_success(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = Settings(redis_url=own_server.url)

    async def scenario() -> None:
        client = connect_async(settings, retry=None)
        outage = OutageLog(logging.getLogger(LOGGER), "beat")
        try:
            with outage.guard():
                await client.ping()
            own_server.kill()
            for _ in range(20):
                with outage.guard():
                    await client.ping()
            assert outage.failing
            own_server.start()
            with outage.guard():
                await client.ping()
            assert not outage.failing
        finally:
            await client.aclose()

    run(scenario())
    messages = [r.getMessage() for r in _lines(caplog)]
    assert len(messages) == 2, messages
    assert "Redis is unreachable" in messages[0]
    assert "Redis answers again" in messages[1]


# -- waiting at start-up ----------------------------------------------------------------------


def test_wait_until_ready_waits_while_the_server_loads_its_aof(
    loading_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = Settings(redis_url=loading_server.url)

    async def scenario() -> bytes | None:
        client = connect_async(settings)
        try:
            waiting = asyncio.create_task(
                wait_until_ready(client, logging.getLogger(LOGGER), "start-up", unreachable_s=0.1)
            )
            await asyncio.sleep(1.5)  # far past unreachable_s: loading is not unreachable
            assert not waiting.done()
            await asyncio.to_thread(finish_loading, loading_server)
            await asyncio.wait_for(waiting, 10)
            value: bytes | None = await client.get("test:kept")
            return value
        finally:
            await client.aclose()

    assert run(scenario()) == b"yes"
    messages = [r.getMessage() for r in _lines(caplog)]
    assert len(messages) == 2, messages
    assert "start-up: Redis is loading its dataset" in messages[0]
    assert "start-up: Redis answers again" in messages[1]


def test_wait_until_ready_gives_up_on_a_server_that_is_not_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = Settings(redis_url=f"unix://{tmp_path / 'nothing.sock'}")

    async def scenario() -> None:
        client = connect_async(settings)
        try:
            await wait_until_ready(client, logging.getLogger(LOGGER), "start-up", unreachable_s=0.5)
        finally:
            await client.aclose()

    with pytest.raises(BrokerUnavailable, match=r"unreachable \(waited 0.5s\)"):
        run(scenario())
    (warning,) = _lines(caplog)
    assert "start-up: Redis is unreachable" in warning.getMessage()


def test_wait_until_ready_returns_at_once_when_the_server_answers(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario() -> None:
        client = connect_async(settings)
        try:
            await wait_until_ready(client, logging.getLogger(LOGGER), "start-up")
        finally:
            await client.aclose()

    run(scenario())
    assert _lines(caplog) == []


# -- probing a socket -------------------------------------------------------------------------


def test_server_answers_tells_a_live_or_loading_server_from_a_stale_socket(
    loading_server: EmbeddedServer, tmp_path: Path
) -> None:
    assert not server_answers(tmp_path / "nothing.sock")
    assert server_answers(loading_server.socket), "a loading server owns its socket"
    assert loading_server.answers()
    loading_server.kill()
    assert loading_server.socket.exists()  # SIGKILL leaves the socket file behind
    assert not server_answers(loading_server.socket)
