"""The `simulate` subcommand's flags and its run loop."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from exporter.simulator.cli import add_arguments, parse_listen_address, run, settings_from_args
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    settings = settings_from_args(parse())
    assert (settings.host, settings.port) == ("127.0.0.1", 9848)
    assert settings.api_keys == ("sk-simulator",)
    assert settings.time_scale == 1.0
    assert settings.rate_limit_per_minute == 1000
    assert settings.faults == {}


def test_flags() -> None:
    settings = settings_from_args(
        parse(
            "--web.listen-address=0.0.0.0:0",
            "--api-key=sk-a",
            "--api-key=sk-b",
            "--time-scale=60",
            "--seed=3",
            "--rate-limit-per-minute=50",
            "--fault=http_500=0.1",
            '--fault=slow={"delay_seconds": 3}',
            "--fault=timeout",
            "--log-level=debug",
        )
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 0)
    assert settings.api_keys == ("sk-a", "sk-b")
    assert (settings.time_scale, settings.seed, settings.rate_limit_per_minute) == (60.0, 3, 50)
    assert settings.faults == {"http_500": 0.1, "slow": {"delay_seconds": 3}, "timeout": 1.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9848", ("127.0.0.1", 9848)),
        (":9848", ("0.0.0.0", 9848)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9848", "host:port", "host:70000"])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


def test_bad_flags_exit_2() -> None:
    assert run(parse("--fault=nope=1")) == 2
    assert run(parse("--time-scale=0")) == 2


@pytest.mark.integration
def test_run_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    codes: list[int] = []
    args = parse("--web.listen-address=127.0.0.1:0", "--time-scale=10")
    thread = threading.Thread(target=lambda: codes.append(run(args, stop)))
    with caplog.at_level("INFO", logger="exporter.simulator.cli"):
        thread.start()

        def listening() -> str | None:
            assert thread.is_alive(), codes
            found = re.search(r"listening on (http://\S+)", caplog.text)
            return found.group(1) if found else None

        url = wait_for(listening, 30, "the simulator to listen", every=0.01)
        reply = requests.get(
            f"{url}/v1/tasks/x", headers={"Authorization": "Bearer sk-simulator"}, timeout=5
        )
        assert reply.status_code == 404
        stop.set()
        thread.join()
    assert codes == [0]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_sigterm_stops_the_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--web.listen-address=127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        while "listening on" not in line:
            assert line, "the simulator exited before listening"
            line = process.stderr.readline()
        url = re.search(r"listening on (http://\S+)", line)
        assert url is not None
        assert requests.get(f"{url.group(1)}/_sim/health", timeout=5).json() == {"ok": True}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
