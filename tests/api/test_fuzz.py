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
    # A body over BATCHLINE_MAX_BODY_BYTES is refused with 413: a rejection too.
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", '
        '"422", "428", "429"]\n'
    )
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
        cwd=tmp_path,  # (its configuration, and where it keeps its state)
    )
    # (its report repeats whole generated bodies, which can be megabytes: lines are cut)
    report = "\n".join(line[:300] for line in result.stdout.splitlines())
    assert result.returncode == 0, report[-8000:] + result.stderr[-2000:]
