"""The asyncio clients pack commands with hiredis (queueing.connection._pack_with_hiredis):
byte for byte what redis-py's own packer makes, for every kind of argument."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
import redis.connection

from queueing.connection import connect_async
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
    client = connect_async(settings)
    assert isinstance(client, redis.asyncio.Redis)
    connection = client.connection_pool.connection_class()
    assert connection.pack_command(*args) == redis.connection.HiredisRespSerializer().pack(*args)
    run(client.aclose())


def test_the_packer_serves_real_commands(settings: Settings) -> None:
    async def scenario() -> None:
        client = connect_async(settings)
        try:
            assert await client.set("packed", memoryview(b"mv"))
            assert await client.get("packed") == b"mv"
            assert await client.execute_command("CLIENT SETNAME", "packer")  # (two words)
        finally:
            await client.aclose()

    run(scenario())
