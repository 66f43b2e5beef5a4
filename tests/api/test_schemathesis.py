"""Schemathesis against the live exporter: the OpenAPI document matches what the server does.

Every check schemathesis has: no 5xx, responses (codes, content types, headers,
bodies) as documented, schema-invalid requests refused, valid ones accepted,
no endpoint usable without the token, undocumented methods answered 405.
Bounded: at most 50 examples per operation and phase, a fixed seed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.simulator import Simulator
from tests.api.conftest import api_config, start_exporter, stop_exporter
from tests.api.support import AUTH
from tests.harness import ExporterProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def fuzzed(sim: Simulator, tmp_path: Path) -> Iterator[ExporterProcess]:
    # A body limit no schema-valid batch reaches, so only the schema decides.
    config = api_config(sim.url, tmp_path, max_batch_size=20, max_body_bytes=1_048_576)
    process = start_exporter(tmp_path, config)
    yield process
    stop_exporter(process)


def test_schemathesis_finds_nothing(fuzzed: ExporterProcess, tmp_path: Path) -> None:
    junit = tmp_path / "schemathesis.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{fuzzed.url}/api/v1/openapi.json",
        "--url",
        fuzzed.url,
        "--header",
        f"Authorization:{AUTH['Authorization']}",
        "--checks",
        "all",
        "--max-examples",
        "50",
        "--seed",
        "20260101",
        "--workers",  # one: hypothesis' lambda descriptions are not thread-safe on 3.11
        "1",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--output-sanitize",
        "true",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-15000:] + result.stderr[-3000:]
    assert "Traceback" not in fuzzed.log_text()
    assert "unexpected error" not in fuzzed.log_text()
