"""The ``batchline`` command's own settings: the default pipelines belong to it, not to the
queue layer's Settings."""

from __future__ import annotations

import pytest

from batchline.cli import DEFAULT_PIPELINES, _settings, parser
from queueing.settings import Settings


def test_the_queue_layers_settings_name_no_pipelines() -> None:
    assert Settings().pipelines == ()
    assert Settings.from_env({}).pipelines == ()


def test_the_command_defaults_to_the_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHLINE_PIPELINES", raising=False)
    assert DEFAULT_PIPELINES == ("pipelines.examples",)
    assert _settings(parser().parse_args(["worker", "echo"])).pipelines == DEFAULT_PIPELINES
    monkeypatch.setenv("BATCHLINE_PIPELINES", "")
    assert _settings(parser().parse_args(["status"])).pipelines == DEFAULT_PIPELINES


def test_the_environment_and_the_flag_still_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHLINE_PIPELINES", "a.b, c")
    assert _settings(parser().parse_args(["register"])).pipelines == ("a.b", "c")
    args = parser().parse_args(["register", "--pipelines", "x.y"])
    assert _settings(args).pipelines == ("x.y",)
