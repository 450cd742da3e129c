"""Every endpoint fuzzed by schemathesis from the published OpenAPI document (issue 10): all
its checks (server errors, response and header conformance, status codes, auth, stateful links)
on a bounded number of generated requests with a fixed seed, against a real gateway with API
keys on (the document declares them) and a real worker. It must find nothing.

One check is left out: ``positive_data_acceptance`` (every schema-valid request accepted). A
pipeline's input is any JSON in the document, while the gateway refuses, by design and as its
docs say, JSON nested over 64 levels and integers outside -2**63..2**64-1 (422)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from api.auth import digest
from queueing.settings import Settings
from tests.api.conftest import LiveGateway

ST = Path(sys.executable).with_name("st")
KEY = "fuzz-key"


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_failure(
    api_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    settings = api_settings.replace(api_keys=(digest(KEY),))
    register(settings)
    gateway = start_gateway(settings)
    workers("echo")
    result = subprocess.run(
        [
            *(str(ST), "run", f"{gateway.url}/openapi.json"),
            *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
            *("--max-examples", "15", "--seed", "7"),
            *("-H", f"X-API-Key: {KEY}"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=tmp_path,  # (where it keeps its state)
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
