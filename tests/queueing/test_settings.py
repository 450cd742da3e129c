"""Settings.from_env: parsing, validation (errors name the variable), REDIS_URL handling."""

from __future__ import annotations

import pytest

from queueing.client import AsyncClient, Client
from queueing.connection import connect
from queueing.errors import ConfigError
from queueing.settings import Settings

from .helpers import run


def test_defaults_without_any_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.prefix == "bl"
    assert settings.partitions == 1
    assert settings.heartbeat_interval_s == pytest.approx(settings.visibility_timeout_s / 3)


def test_every_kind_of_field_is_parsed() -> None:
    settings = Settings.from_env(
        {
            "BATCHLINE_PARTITIONS": "4",
            "BATCHLINE_VISIBILITY_TIMEOUT_S": "2.5",
            "BATCHLINE_DURABLE_SUBMIT": "Yes",
            "BATCHLINE_PIPELINES": " a.b , c ,, d ",
            "BATCHLINE_PREFIX": "staging",
            "BATCHLINE_WORKER_NAME": "w-1",
            "BATCHLINE_API_KEYS": "abc,def",
            "BATCHLINE_RETRY_S": "0.5",
            "UNRELATED": "x",
        }
    )
    assert settings.partitions == 4
    assert settings.visibility_timeout_s == 2.5
    assert settings.durable_submit is True
    assert settings.pipelines == ("a.b", "c", "d")
    assert settings.prefix == "staging"
    assert settings.worker_name == "w-1"
    assert settings.api_keys == ("abc", "def")
    assert settings.retry_s == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"BATCHLINE_DURABLE_SUBMIT": raw}).durable_submit is expected


def test_an_empty_variable_means_the_default() -> None:
    settings = Settings.from_env({"BATCHLINE_PARTITIONS": "", "BATCHLINE_PIPELINES": ""})
    assert settings.partitions == 1
    assert settings.pipelines == Settings().pipelines


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BATCHLINE_PARTITIONS", "abc"),
        ("BATCHLINE_PARTITIONS", "1.5"),
        ("BATCHLINE_VISIBILITY_TIMEOUT_S", "soon"),
        ("BATCHLINE_DURABLE_SUBMIT", "maybe"),
        ("BATCHLINE_MAX_DELIVERIES", "three"),
        ("BATCHLINE_BLOCK_MS", "1e3x"),
    ],
)
def test_unparsable_values_raise_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value)
    assert raw in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BATCHLINE_PARTITIONS", "0"),
        ("BATCHLINE_MAX_DELIVERIES", "0"),
        ("BATCHLINE_MAX_BACKLOG", "-1"),
        ("BATCHLINE_VISIBILITY_TIMEOUT_S", "0"),
        ("BATCHLINE_VISIBILITY_TIMEOUT_S", "nan"),
        ("BATCHLINE_RESULT_TTL_S", "-5"),
        ("BATCHLINE_BLOCK_MS", "0"),
        ("BATCHLINE_RETRY_S", "-1"),
        ("BATCHLINE_RETRY_S", "nan"),
        ("BATCHLINE_RETRY_S", "inf"),
        ("BATCHLINE_PREFIX", "a:b"),
        ("BATCHLINE_PREFIX", "{x}"),
        ("BATCHLINE_PREFIX", "has space"),
    ],
)
def test_out_of_range_values_raise_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("name", ["BATCHLINE_RESULT_TTL_S", "BATCHLINE_VISIBILITY_TIMEOUT_S"])
def test_infinite_durations_are_rejected(name: str) -> None:
    """Both are turned into whole seconds/milliseconds for Redis (``int(...)`` in the stream
    protocol), which overflows on ``inf``: they must fail at start-up, not at the first
    finish/claim."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "inf"})


def test_retrying_can_be_turned_off() -> None:
    assert Settings().retry_s == 10.0
    assert Settings.from_env({"BATCHLINE_RETRY_S": "0"}).retry_s == 0.0


def test_replace_validates_too() -> None:
    with pytest.raises(ConfigError, match="BATCHLINE_PARTITIONS"):
        Settings().replace(partitions=0)
    assert Settings().replace(partitions=3).partitions == 3


def test_redis_url_is_the_standard_name() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://h:1/2"}).redis_url == "redis://h:1/2"
    assert Settings.from_env({"REDIS_URL": ""}).redis_url is None


def test_batchline_redis_url_wins_over_redis_url() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://plain:1/0", "BATCHLINE_REDIS_URL": "redis://ours:2/0"}
    )
    assert settings.redis_url == "redis://ours:2/0"


def test_overrides_win_over_the_environment_and_none_means_unset() -> None:
    env = {"REDIS_URL": "redis://env:1/0", "BATCHLINE_PARTITIONS": "2"}
    settings = Settings.from_env(env, redis_url="redis://flag:1/0", partitions=None)
    assert settings.redis_url == "redis://flag:1/0"
    assert settings.partitions == 2
    with pytest.raises(ConfigError, match="BATCHLINE_PARTITIONS"):
        Settings.from_env(env, partitions=0)


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-process:6379/0")
    monkeypatch.setenv("BATCHLINE_MAX_BACKLOG", "7")
    settings = Settings.from_env()
    assert settings.redis_url == "redis://from-process:6379/0"
    assert settings.max_backlog == 7


def test_no_redis_url_is_a_config_error_that_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        connect(Settings())
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Client(Settings())

    async def async_client() -> None:
        AsyncClient(Settings())

    with pytest.raises(ConfigError, match="REDIS_URL"):
        run(async_client())


def test_a_malformed_redis_url_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL='nonsense://x'"):
        connect(Settings(redis_url="nonsense://x"))


def test_client_url_argument_overrides_settings(redis_url: str) -> None:
    with Client(Settings(redis_url="redis://127.0.0.1:1/0"), url=redis_url) as client:
        assert client.core.settings.redis_url == redis_url
        assert client.redis.ping()
