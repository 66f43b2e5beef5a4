"""deploy/systemd: the unit passes `systemd-analyze verify`, is hardened, and its config
finds the API key where the unit's credential puts it."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from exporter.cli import _parser
from exporter.config import parse_config
from tests.deploy.support import DEPLOYMENT_DOC, SYSTEMD_DIR
from tests.monitoring.support import require_tool

UNIT = SYSTEMD_DIR / "lemondata-exporter.service"
CONFIG = SYSTEMD_DIR / "config.yaml"
SYSTEMD_HINT = "apt-get install systemd (scripts/test.sh does)"


def service() -> dict[str, list[str]]:
    """The [Service] section, every value of a repeated key kept."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's entry point."""
    entry_point = Path(sys.executable).parent / "lemondata-exporter"
    if not entry_point.is_file():
        entry_point = Path(require_tool("lemondata-exporter", hint="pip install -e ."))
    text = UNIT.read_text(encoding="utf-8")
    text = text.replace("/opt/lemondata-exporter/bin/lemondata-exporter", str(entry_point))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@pytest.mark.integration
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", hint=SYSTEMD_HINT)
    copy = installed_copy(tmp_path)
    result = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on settings it ignores with a warning: any output is a failure.
    complaints = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@pytest.mark.integration
def test_systemd_analyze_verify_catches_a_bad_setting(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", hint=SYSTEMD_HINT)
    copy = installed_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=stric"))
    result = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr


@pytest.mark.integration
def test_exposure_level(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", hint=SYSTEMD_HINT)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0 is fully locked down, 10 not at all; "OK" is below 4.5 (docs/deployment.md
    # quotes the figure).
    assert float(match.group(1)) <= 2.0, result.stdout


def test_hardening_settings() -> None:
    settings = service()
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "StateDirectory": "lemondata-exporter",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "User" not in settings


def test_exec_start_is_a_valid_command_line() -> None:
    (exec_start,) = service()["ExecStart"]
    program, *args = exec_start.split()
    assert PurePosixPath(program).name == "lemondata-exporter"
    parsed = _parser().parse_args(args)
    assert parsed.command == "run"
    assert Path(parsed.config_file) == Path("/etc/lemondata-exporter/config.yaml")


def test_config_reads_the_key_from_the_credential(tmp_path: Path) -> None:
    settings = service()
    (credential,) = settings["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/lemondata-exporter/")
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    # $CREDENTIALS_DIRECTORY of a service is /run/credentials/<unit name>.
    assert data["api"]["key_file"] == f"/run/credentials/{UNIT.name}/{name}"
    (state,) = settings["StateDirectory"]
    assert PurePosixPath(data["store"]["path"]).parent == PurePosixPath("/var/lib") / state
    (workdir,) = settings["WorkingDirectory"]
    assert workdir == f"/var/lib/{state}"
    key = tmp_path / name
    key.write_text("sk-test\n")
    data["api"]["key_file"] = str(key)
    parse_config(data, str(CONFIG))


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_documented_in_deployment_md() -> None:
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert "deploy/systemd/lemondata-exporter.service" in doc
    assert "systemd-analyze verify" in doc
