"""Flags, help and start-up errors of every subcommand, through the real command line."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import KEY_ENV, clean_env, cli, lines, write_config

pytestmark = pytest.mark.integration
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
COMMANDS = {
    "run": "Poll the tasks named by the config file",
    "check-config": "Check a config file and everything it names",
    "demo": "Start a simulator of the API",
    "simulate": "Serve an imitation of the LemonData async task API",
    "track": "Register task IDs with a running exporter",
}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_a_description_and_the_same_log_flags(
    tmp_path: Path, command: str
) -> None:
    result = cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert COMMANDS[command] in text
    assert "--log.level {debug,info,warning,error}" in text
    assert "--log.format {text,logfmt,json}" in text
    assert "--log-level" not in text  # the old spelling works but is not shown


def test_simulate_help_points_to_the_docs(tmp_path: Path) -> None:
    result = cli("simulate", "--help", cwd=tmp_path)
    assert "docs/simulator.md" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", ["run", "demo", "check-config", "simulate"])
def test_a_bad_listen_address_is_refused_before_anything_starts(
    tmp_path: Path, command: str
) -> None:
    result = cli(command, "--web.listen-address", "9860", cwd=tmp_path)
    assert result.returncode == 2
    last = lines(result.stderr)[-1]
    assert last.startswith(f"lemondata-exporter {command}: error: argument --web.listen-address: ")
    assert ":9860" in last
    assert not re.search(RFC3339, result.stderr)  # nothing was logged: nothing started


def test_run_refusal_names_the_fix_for_a_bare_port(tmp_path: Path) -> None:
    result = cli("run", "--web.listen-address", "9860", cwd=tmp_path)
    assert lines(result.stderr)[-1] == (
        "lemondata-exporter run: error: argument --web.listen-address: a bare port "
        "number; write :9860 (every interface) or 127.0.0.1:9860"
    )


@pytest.mark.parametrize("log_format", ["json", "logfmt", "text"])
def test_log_formats_with_rfc3339_timestamps(
    tmp_path: Path, taken_port: int, log_format: str
) -> None:
    address = f"127.0.0.1:{taken_port}"
    result = cli(
        "simulate", "--web.listen-address", address, "--log.format", log_format, cwd=tmp_path
    )
    assert result.returncode == 1
    message = (
        f"cannot listen on {address}: Address already in use; choose another address "
        "with --web.listen-address"
    )
    (line,) = lines(result.stderr)
    if log_format == "json":
        record = json.loads(line)
        assert record["level"] == "error" and record["msg"] == message
        assert record["logger"] == "exporter.simulator.cli"
        assert re.fullmatch(RFC3339, record["ts"])
    elif log_format == "logfmt":
        assert re.fullmatch(
            rf'ts={RFC3339} level=error logger=exporter.simulator.cli msg="{re.escape(message)}"',
            line,
        )
    else:
        assert re.fullmatch(rf"{RFC3339} ERROR exporter.simulator.cli: {re.escape(message)}", line)


def test_the_old_log_level_spelling_still_works(tmp_path: Path, taken_port: int) -> None:
    address = f"127.0.0.1:{taken_port}"
    quiet = cli("simulate", "--web.listen-address", address, "--log-level", "error", cwd=tmp_path)
    assert quiet.returncode == 1 and "cannot listen" in quiet.stderr


def test_demo_with_its_port_taken_says_which_flag_to_use(tmp_path: Path, taken_port: int) -> None:
    address = f"127.0.0.1:{taken_port}"
    result = cli("demo", "--web.listen-address", address, "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        f"cannot listen on {address}: Address already in use; choose another address with "
        "--web.listen-address"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_an_api_key_that_cannot_be_sent(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    env = clean_env(**{KEY_ENV: "sk-one\nsk-two"})
    result = cli("run", "--config.file", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert lines(result.stderr) == [
        f"{path}: $LEMONDATA_API_KEY: the key holds more than one line (a line break inside "
        "it); keep only the key"
    ]


def test_run_without_a_key_exits_2_as_check_config_warned(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"store": {"path": str(tmp_path / "store.db")}})
    result = cli("run", "--config.file", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "no API key: set $LEMONDATA_API_KEY or api.key_file" in result.stderr
    check = cli("check-config", "--config.file", str(path), cwd=tmp_path)
    assert check.returncode == 0 and "warning: no API key" in check.stderr


def test_run_logs_contradiction_warnings_and_loose_key_files(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-loose-file-key")
    key_file.chmod(0o644)
    path = write_config(
        tmp_path,
        {
            "api": {"key_file": str(key_file)},
            "polling": {"cycle_interval_seconds": 10, "task_interval_seconds": 5},
            "store": {"path": str(tmp_path / "store.db")},
        },
    )
    # The port is taken, so `run` stops right after its start-up warnings.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        result = cli(
            "run", "--config.file", str(path), "--web.listen-address", address, cwd=tmp_path
        )
    assert result.returncode == 1
    assert f"WARNING exporter: {path}: polling.cycle_interval_seconds: warning: 10 is above" in (
        result.stderr
    )
    assert (
        f"WARNING exporter: {path}: api.key_file: {key_file} is readable by every user on this "
        f"machine (mode 0644); run `chmod 600 {key_file}`"
    ) in result.stderr
    assert "sk-loose-file-key" not in result.stderr
