"""Fixtures of the adapter tests: settings that load the example pipelines and this folder's
test pipelines (``workers`` and ``client`` come from the shared conftest)."""

from __future__ import annotations

import pytest

from queueing.settings import Settings

PIPELINES = ("pipelines.examples", "tests.adapters.pipelines")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url, visibility_timeout_s=5.0, block_ms=200, pipelines=PIPELINES
    )
