"""Secrets never show: not in logs, metrics, pages, error messages, traces or reprs.

The agent runs at debug level through 401s, network errors, a bad task line
and wrong passwords; then bad configs go through `check-config` and `run`.
Everything it printed and served is searched for the API key, the task-API
token, the passwords, their hash and the encoded Authorization values.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from pydantic import SecretStr

from exporter.config import parse_config, read_api_key
from exporter.simulator import Simulator
from exporter.web.security import load_web_security
from tests.harness import ExporterProcess, parse_metrics, total, wait_for
from tests.harness.fixtures import create_tasks, exporter_config

API_KEY = "sk-SECRET-api-key-4b1d9e7f0a2c"
TOKEN = "tok-SECRET-task-api-token-8c3e51aa90d2f7"
PASSWORD = "SECRET-password-horse-battery"
WRONG_PASSWORD = "SECRET-wrong-password-staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
BAD_HASH = "$2y$10$SECRET-not-really-a-bcrypt-hash"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SECRETS = (
    API_KEY,
    API_KEY[3:],  # in case of a prefix strip
    TOKEN,
    PASSWORD,
    WRONG_PASSWORD,
    HASH,
    HASH[7:],
    BAD_HASH,
    basic("alice", PASSWORD).split()[1],
    basic("alice", WRONG_PASSWORD).split()[1],
    base64.b64encode(API_KEY.encode()).decode(),
)


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert result.returncode != 0 or args[0] == "check-config"
    return result.stdout + result.stderr


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.integration
def test_the_agent_through_errors(simulator: Simulator, tmp_path: Path) -> None:
    web = write(tmp_path / "web.yml", {"basic_auth_users": {"alice": HASH}})
    config = exporter_config(simulator.url, tmp_path)
    config["log_level"] = "debug"
    exporter = ExporterProcess(tmp_path, config, API_KEY)  # the simulator refuses this key
    exporter.env["LEMONDATA_EXPORTER_TOKEN"] = TOKEN
    exporter.extra_args = ["--web.config.file", str(web), "--log.level", "debug"]
    exporter.start(wait_ready=False)
    served: list[tuple[str, str]] = []
    good = {"Authorization": basic("alice", PASSWORD)}

    def get(path: str, headers: dict[str, str]) -> requests.Response:
        response = requests.get(exporter.url + path, headers=headers, timeout=5)
        served.append((f"{path} {headers}", f"{response.headers}\n{response.text}"))
        return response

    try:
        wait_for(lambda: get("/-/ready", good).status_code == 200, 30, "ready")
        create_tasks(simulator, tmp_path / "tasks.jsonl", 5)
        with (tmp_path / "tasks.jsonl").open("a") as handle:
            handle.write(f"not a task id {API_KEY}\n")

        def api_errors(kind: str) -> float:
            samples = parse_metrics(get("/metrics", good).text)
            return total(samples, "lemondata_api_errors_total", kind=kind)

        wait_for(lambda: api_errors("unauthorized") >= 5, 30, "401s from upstream")
        simulator.stop()  # from now on: connection refused
        wait_for(lambda: api_errors("connection") >= 3, 30, "network errors")
        for headers in (
            {},
            {"Authorization": basic("alice", WRONG_PASSWORD)},
            {"Authorization": basic("mallory", PASSWORD)},
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": "Basic " + "A" * 5000},
        ):
            for path in ("/", "/metrics", "/-/healthy", "/api/v1/tasks", "/status"):
                # /api/ checks its own bearer token instead of the password.
                allowed = path.startswith("/api/") and headers.get("Authorization", "").endswith(
                    TOKEN
                )
                assert get(path, headers).status_code == (200 if allowed else 401)
        for path in ("/", "/metrics", "/-/healthy", "/-/ready", "/api/v1/tasks", "/status", "/x"):
            get(path, good)
            get(path, {**good, "X-Api-Token": TOKEN})
    finally:
        assert exporter.terminate() == 0
    log = exporter.log_text()
    assert "rejects the API key" in log
    assert_clean("the exporter's log", log)
    for what, text in served:
        assert_clean(what, text)


@pytest.mark.integration
def test_bad_configs_do_not_echo_secrets(tmp_path: Path) -> None:
    key_in_file = write(tmp_path / "key.yml", {"api": {"api_key": API_KEY}})
    bad_web = write(tmp_path / "web.yml", {"basic_auth_users": {"alice": BAD_HASH}})
    plain_web = write(tmp_path / "plain.yml", {"basic_auth_users": {"alice": PASSWORD}})
    good = write(tmp_path / "good.yml", {"store": {"path": str(tmp_path / "s.db")}})
    key_file = tmp_path / "key.txt"
    key_file.write_text(API_KEY)
    wrong_type = write(tmp_path / "type.yml", {"api": {"base_url": API_KEY, "key_file": API_KEY}})
    env = {"LEMONDATA_API_KEY": API_KEY, "LEMONDATA_EXPORTER_TOKEN": TOKEN}
    outputs = [
        run_cli("check-config", "--config.file", str(key_in_file), env=env),
        run_cli("run", "--config.file", str(key_in_file), env=env),
        run_cli("check-config", "--config.file", str(good), "--web.config.file", str(bad_web)),
        run_cli("run", "--config.file", str(good), "--web.config.file", str(plain_web), env=env),
        run_cli("check-config", "--config.file", str(wrong_type), env=env),
        run_cli("run", "--config.file", str(good), "--web.listen-address", API_KEY, env=env),
    ]
    for output in outputs:
        assert_clean("a command's output", output)
        assert "Traceback" not in output
    assert "the API key must not be written in the config file" in outputs[0]
    assert "basic_auth_users: the password of user 'alice' is not a bcrypt hash" in outputs[2]


def test_reprs_hide_secrets(tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(API_KEY)
    config = parse_config({"api": {"key_file": str(key_file)}}, "config.yaml")
    key = read_api_key(config)
    assert key is not None and key.get_secret_value() == API_KEY
    web = load_web_security(write(tmp_path / "web.yml", {"basic_auth_users": {"alice": HASH}}))
    assert web is not None
    for value in (config, key, web, web.config, SecretStr(TOKEN)):
        assert_clean("a repr", repr(value) + str(value))
