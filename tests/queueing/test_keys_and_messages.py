"""Key names, job ids and the message codec (no server needed, except for the last test)."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import redis

from queueing.client import Client
from queueing.errors import DecodeError
from queueing.keys import Keys, check_name, is_job_id, new_job_id, new_job_ids, partition_of
from queueing.message import JSON, Message, dumps, job_id_of, loads
from queueing.registry import PipelineSpec, StageSpec, lookup, parse_registry
from queueing.settings import Settings
from queueing.streams import consumer_name

from .helpers import FakeWorker, hash_tag, register

JOB = "0-" + "ab" * 16


# -- job ids -----------------------------------------------------------------------------


def test_job_ids_carry_the_partition_and_128_random_bits() -> None:
    ids = {new_job_id(7) for _ in range(2000)}
    assert len(ids) == 2000
    for job_id in ids:
        match = re.fullmatch(r"7-([0-9a-f]{32})", job_id)
        assert match, job_id
        assert partition_of(job_id) == 7
        assert is_job_id(job_id)
    # 128 bits of randomness: every one of the 32 hex digits takes many values.
    randoms = [job_id.split("-", 1)[1] for job_id in ids]
    for position in range(32):
        assert len({r[position] for r in randoms}) == 16
    assert int(max(randoms), 16).bit_length() > 120


def test_job_ids_made_together_are_as_random_as_ids_made_alone() -> None:
    partitions = [i % 5 for i in range(2000)]
    ids = new_job_ids(partitions)
    assert len(set(ids)) == 2000
    assert [partition_of(job_id) for job_id in ids] == partitions
    randoms = [job_id.split("-", 1)[1] for job_id in ids]
    for position in range(32):
        assert len({r[position] for r in randoms}) == 16
    assert new_job_ids([]) == []


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "0-" + "ab" * 15,  # too short
        "0-" + "ab" * 17,  # too long
        "0-" + "AB" * 16,  # upper case
        "x-" + "ab" * 16,
        "12345-" + "ab" * 16,  # partition too long
        "0_" + "ab" * 16,
        "0-" + "ab" * 16 + "\n",  # `$` alone would accept a trailing newline
        "\u0663-" + "ab" * 16,  # a non-ASCII digit (`\\d` alone would accept it)
        "../0-" + "ab" * 16,
    ],
)
def test_malformed_job_ids_are_refused(bad: str) -> None:
    assert not is_job_id(bad)
    with pytest.raises(ValueError, match="not a job id"):
        partition_of(bad)
    with pytest.raises(ValueError, match="not a job id"):
        Keys().job(bad)


# -- keys --------------------------------------------------------------------------------


def test_every_job_key_carries_the_partition_hash_tag() -> None:
    keys = Keys("bl")
    job_id = new_job_id(3)
    job_keys = [
        keys.job(job_id),
        keys.joins(job_id),
        keys.stream(3, "p.s"),
        keys.dead(3, "p.s"),
        keys.idempotency(3, "p", "key"),
        keys.stats(3),
        keys.job_prefix(3) + job_id,
    ]
    for key in job_keys:
        assert key.startswith("bl:{3}:"), key
        assert hash_tag(key) == "3", key
    assert keys.job(job_id) == keys.job_prefix(3) + job_id
    assert len(set(job_keys)) == len(job_keys) - 1  # all distinct but the job key, listed twice


def test_key_layout_and_prefix() -> None:
    keys = Keys("stage")
    assert keys.stream(0, "p.a") == "stage:{0}:in:p.a"
    assert keys.dead(1, "p.a") == "stage:{1}:dead:p.a"
    assert keys.job("2-" + "0" * 32) == "stage:{2}:job:2-" + "0" * 32
    assert keys.registry == "stage:registry"
    assert keys.workers == "stage:workers"
    assert keys.notify(3, "x") == "stage:{3}:notify:x"
    assert Keys.group("p.a") == "p.a"
    assert Keys() == Keys("bl")


@pytest.mark.parametrize("good", ["echo", "my-pipe_2", "p.stage", "A1.b-2"])
def test_good_names(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize(
    "bad", ["", "a b", "a.b.c", "a:b", "a{b}", ".a", "a.", "é", "echo\n", "p.stage\n"]
)
def test_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="bad name"):
        check_name(bad)


def test_consumer_name() -> None:
    assert consumer_name(Settings(worker_name="w7")) == "w7"
    assert consumer_name(Settings()).endswith(f"-{os.getpid()}")


# -- the message codec -------------------------------------------------------------------


def _fields(message: Message) -> dict[bytes, bytes]:
    """What XREADGROUP hands back for an XADD of ``message.encode()``."""
    flat = message.encode()
    as_bytes = [v if isinstance(v, bytes) else v.encode() for v in flat]
    return dict(zip(as_bytes[::2], as_bytes[1::2], strict=True))


@pytest.mark.parametrize(
    "message",
    [
        Message(JOB, b'{"x":1}', 1700000000.123456),
        Message(JOB, b"[1,2,3]", 1.5, deadline=1700000001.25),
        Message(JOB, b"\x00\xff raw", 2.0, fmt="raw"),
        Message(JOB, b"null", 0.1 + 0.2, deadline=math.pi, fmt=JSON),
    ],
)
def test_message_round_trip(message: Message) -> None:
    assert Message.decode(_fields(message)) == message


def test_message_encoding_leaves_out_defaults() -> None:
    fields = _fields(Message(JOB, b"1", 3.0))
    assert set(fields) == {b"job", b"data", b"at"}


def test_payload_codec() -> None:
    value = {"a": [1, 2.5, None, True], "nested": {"s": "é"}, 3: "int key"}
    assert loads(dumps(value)) == {"a": [1, 2.5, None, True], "nested": {"s": "é"}, "3": "int key"}
    assert loads(dumps(np.arange(3, dtype=np.float32))) == [0.0, 1.0, 2.0]
    assert Message(JOB, dumps({"x": 1}), 1.0).value() == {"x": 1}
    with pytest.raises(TypeError, match="cannot encode object"):
        dumps(object())


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (None, "no fields"),
        ({}, "no fields"),
        ({b"data": b"1", b"at": b"1"}, "no 'job' field"),
        ({b"job": b"nope", b"data": b"1", b"at": b"1"}, "no valid job id"),
        ({b"job": b"\xff\xfe", b"data": b"1", b"at": b"1"}, "not text"),
        ({b"job": JOB.encode(), b"at": b"1"}, "no data field"),
        ({b"job": JOB.encode(), b"data": b"1"}, "no 'at' field"),
        ({b"job": JOB.encode(), b"data": b"1", b"at": b"yesterday"}, "bad timestamp"),
        ({b"job": JOB.encode(), b"data": b"1", b"at": b"1", b"dl": b"never"}, "bad timestamp"),
        ({b"job": JOB.encode(), b"data": b"1", b"at": b"\xff"}, "not text"),
        ({b"job": JOB.encode(), b"data": b"1", b"at": b"1", b"dl": b"\xff"}, "bad timestamp"),
    ],
)
def test_malformed_entries_raise_decode_error(fields: dict[bytes, bytes] | None, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        Message.decode(fields)


def test_a_non_text_format_field_raises_decode_error() -> None:
    """A worker catches DecodeError only (workers/loop.py), so any other exception from a
    garbage entry would crash its loop instead of failing that one job."""
    fields = {b"job": JOB.encode(), b"data": b"1", b"at": b"1", b"fmt": b"\xff\xfe"}
    with pytest.raises(DecodeError):
        Message.decode(fields)


def test_bad_payloads_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        Message(JOB, b"{nope", 1.0).value()
    with pytest.raises(DecodeError, match="unknown payload format 'pickle'"):
        Message(JOB, b"x", 1.0, fmt="pickle").value()


def test_job_id_of_recovers_the_id_of_an_otherwise_bad_entry() -> None:
    assert job_id_of({b"job": JOB.encode(), b"junk": b"1"}) == JOB
    assert job_id_of({b"job": b"not-an-id"}) is None
    assert job_id_of({b"job": b"\xff"}) is None
    assert job_id_of({b"other": b"1"}) is None
    assert job_id_of(None) is None


# -- registry specs ----------------------------------------------------------------------


def test_pipeline_spec_round_trip_and_lookup() -> None:
    spec = PipelineSpec(
        name="pipe",
        stages=(
            StageSpec("pipe.a", max_batch_size=8, batch_wait_timeout_s=0.5, next=("pipe.b",)),
            StageSpec("pipe.b", routes=("pipe.c",), join="pipe.j"),
        ),
        input_schema={"type": "object"},
        example={"x": 1},
        max_backlog=10,
        description="d",
        extra={"k": "v"},
    )
    assert PipelineSpec.decode(spec.encode()) == spec
    assert spec.entry.name == "pipe.a"
    assert spec.stage("pipe.b").join == "pipe.j"
    specs = parse_registry({b"pipe": spec.encode()})
    assert lookup(specs, "pipe") == spec
    with pytest.raises(LookupError, match="unknown pipeline 'other'"):
        lookup(specs, "other")
    with pytest.raises(DecodeError, match="bad pipeline spec"):
        PipelineSpec.decode(b'{"name": "x"}')
    with pytest.raises(DecodeError):
        PipelineSpec.decode(b"not json")
    with pytest.raises(ValueError, match="no stages"):
        PipelineSpec("x", ())
    with pytest.raises(ValueError, match="max_batch_size"):
        StageSpec("x.y", max_batch_size=0)


# -- hash tags in a real server ----------------------------------------------------------


def test_every_key_a_job_touches_is_in_its_partition(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Submit (some with idempotency keys) into three partitions and run them through a
    two-stage pipeline: every key left in Redis, apart from the global registry/worker keys
    and the clients' notify channels, is tagged with the partition of the job it belongs to."""
    settings = settings.replace(partitions=3)
    register(redis_client, settings, "tagged", ("a", "b"))
    with Client(settings) as client:
        jobs = [client.submit("tagged", i) for i in range(4)]
        jobs += [client.submit("tagged", i, idempotency_key=f"k{i}") for i in range(4)]
        assert {partition_of(job.id) for job in jobs} == {0, 1, 2}
        with (
            FakeWorker(settings, "tagged.b", lambda v: v),
            FakeWorker(settings, "tagged.a", lambda v: v, forward_to="tagged.b"),
        ):
            assert [job.result(timeout=10) for job in jobs] == [0, 1, 2, 3, 0, 1, 2, 3]
    job_ids = {job.id for job in jobs}
    keys = [k.decode() for k in redis_client.scan_iter(count=1000)]
    assert keys
    for key in keys:
        if key in (Keys().registry, Keys().workers, Keys().worker_info):
            continue
        tag = hash_tag(key)
        assert tag is not None, key
        assert key.startswith(f"bl:{{{tag}}}:"), key
        for job_id in job_ids:
            if job_id in key:
                assert tag == str(partition_of(job_id)), key
    for job_id in job_ids:
        assert f"bl:{{{partition_of(job_id)}}}:job:{job_id}" in keys
