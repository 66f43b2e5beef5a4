"""Settings from the environment, through `run` and `check-config` as a user starts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.simulator import Simulator
from tests.cli.support import clean_env, cli, lines
from tests.harness import ExporterProcess, total, wait_for
from tests.harness.fixtures import KEY, create_tasks, exporter_config

pytestmark = pytest.mark.integration


def test_variables_override_the_file_and_run_uses_them(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = exporter_config(simulator.url, tmp_path)
    del config["discovery"]  # the watched file comes from the environment only
    watched = tmp_path / "from-env.jsonl"
    exporter = ExporterProcess(tmp_path, config, KEY)
    exporter.env["LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND"] = "150"
    exporter.env["LEMONDATA_EXPORTER_DISCOVERY__FILES"] = f"[{{path: '{watched}'}}]"
    exporter.env["LEMONDATA_EXPORTER_DISCOVERY__INTERVAL_SECONDS"] = "0.2"
    exporter.start()
    try:
        samples = exporter.metrics()
        assert total(samples, "lemondata_poll_budget_requests_per_second") == 150
        ids = create_tasks(simulator, watched, 3)
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks_discovered_total") >= len(ids),
            30,
            "tasks from the file the environment named",
        )
    finally:
        assert exporter.terminate() == 0


def test_check_config_says_where_each_setting_came_from(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("polling:\n  requests_per_second: 3\nlog_level: debug\n")
    env = clean_env(
        LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND="4",
        LEMONDATA_EXPORTER_API__TIMEOUT_SECONDS="12",
        LEMONDATA_API_KEY="sk-check-config-env-0123456789",
    )
    result = cli("check-config", "--config.file", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = lines(result.stdout)
    start = shown.index("  settings not at their defaults:")
    assert shown[start + 1 :] == [
        "    api.timeout_seconds = 12.0 (from $LEMONDATA_EXPORTER_API__TIMEOUT_SECONDS)",
        "    polling.requests_per_second = 4.0 "
        "(from $LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND)",
        f'    log_level = "debug" (from {path})',
    ]


def test_a_bad_variable_stops_run_and_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    secret = "sk-pasted-into-the-wrong-variable-42"
    env = clean_env(
        LEMONDATA_EXPORTER_API__KEY=secret,
        LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND="fast",
        LEMONDATA_API_KEY="sk-run-env-0123456789",
    )
    result = cli("run", "--config.file", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "$LEMONDATA_EXPORTER_API__KEY: unknown setting in api; did you mean "
        "LEMONDATA_EXPORTER_API__KEY_FILE?",
        "$LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND: polling.requests_per_second: "
        "Input should be a valid number, unable to parse string as a number",
    ]
    assert secret not in result.stderr + result.stdout
