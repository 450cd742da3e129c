"""The clients pack commands straight with hiredis (queueing.connection._pack_with_hiredis):
byte for byte what redis-py's own packer makes, for every kind of argument."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
import redis.connection

from queueing.connection import connect, connect_async
from queueing.settings import Settings

from .helpers import run

CASES: list[tuple[Any, ...]] = [
    ("EVALSHA", "ab" * 20, 2, "bl:{0}:in:echo", "bl:{0}:job:0-1", "done", b'{"x":1}', 1.5, ""),
    ("SET", "k", bytearray(b"value")),
    ("SET", "k", memoryview(b"value")),
    ("CLIENT SETNAME", "name"),
    (b"PING",),
    ("HSET", "h", "f", "é"),
]


@pytest.mark.parametrize("args", CASES)
def test_the_packer_makes_what_redis_py_makes(settings: Settings, args: tuple[Any, ...]) -> None:
    expected = redis.connection.HiredisRespSerializer().pack(*args)
    aio = connect_async(settings)
    assert isinstance(aio, redis.asyncio.Redis)
    assert aio.connection_pool.connection_class().pack_command(*args) == expected
    run(aio.aclose())
    sync = connect(settings)
    assert isinstance(sync, redis.Redis)
    assert sync.connection_pool.connection_class().pack_command(*args) == expected
    sync.close()


def test_the_packer_serves_real_commands(settings: Settings) -> None:
    sync = connect(settings)
    try:
        assert sync.set("packed", bytearray(b"ba"))
        assert sync.get("packed") == b"ba"
    finally:
        sync.close()

    async def scenario() -> None:
        client = connect_async(settings)
        try:
            assert await client.set("packed", memoryview(b"mv"))
            assert await client.get("packed") == b"mv"
            assert await client.execute_command("CLIENT SETNAME", "packer")  # (two words)
        finally:
            await client.aclose()

    run(scenario())
