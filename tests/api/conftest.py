"""The real exporter (a subprocess) with its task API on, against the real simulator."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.api.auth import TOKEN_ENV
from exporter.simulator import Simulator, SimulatorSettings
from tests.api.support import AUTH, TOKEN
from tests.harness import ExporterProcess
from tests.harness.fixtures import KEY, exporter_config

TIME_SCALE = 60.0  # a 60 s task takes 1 s


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator(
        SimulatorSettings(
            port=0,
            api_keys=(KEY,),
            time_scale=TIME_SCALE,
            seed=7,
            rate_limit_per_minute=0,
            lost_fraction=0.0,
        )
    )
    simulator.start()
    yield simulator
    simulator.stop()


def api_config(sim_url: str, workdir: Path, **api_server: Any) -> dict[str, Any]:
    config = exporter_config(sim_url, workdir)
    config["api_server"] = api_server
    return config


def start_exporter(
    workdir: Path, config: dict[str, Any], token: str | None = TOKEN
) -> ExporterProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    process = ExporterProcess(workdir, config, KEY)
    process.env.pop(TOKEN_ENV, None)
    if token is not None:
        process.env[TOKEN_ENV] = token
    return process.start()


def stop_exporter(process: ExporterProcess, timeout: float = 60) -> None:
    """SIGTERM and wait; a hang is killed and reported with the end of the log."""
    try:
        process.terminate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"the exporter did not stop within {timeout} s: {process.log_text()[-3000:]}"
        ) from None


@pytest.fixture(scope="module")
def exporter(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """One exporter shared by a module's tests: token from the environment."""
    workdir = tmp_path_factory.mktemp("exporter")
    process = start_exporter(workdir, api_config(sim.url, workdir, max_batch_size=100))
    yield process
    stop_exporter(process)


@pytest.fixture
def client() -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers.update(AUTH)
    yield session
    session.close()


def chromium_or_skip() -> str:
    """Chromium's path; a skip on a developer's machine without it, a failure in CI."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); in CI this fails")
