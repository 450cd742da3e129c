"""Fixtures of the composition tests: settings that load the example pipelines and this
folder's test pipelines (the workers and client fixtures come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from queueing.settings import Settings

PIPELINES = ("pipelines.examples", "tests.composition.pipelines")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings, loading the examples and this folder's test pipelines."""
    return settings.replace(pipelines=PIPELINES)
