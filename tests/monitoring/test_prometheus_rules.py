"""The Prometheus configuration and rules: promtool checks and unit tests, conventions."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.monitoring.support import (
    PROMETHEUS_CONFIG,
    REPO,
    RULE_TESTS_DIR,
    RULES_DIR,
    RUNBOOK_BASE,
    alerts,
    documented_metrics,
    load_yaml,
    metric_names,
    recorded_names,
    require_tool,
    rule_files,
    rules,
)

PROMTOOL_HINT = "Debian package prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", hint=PROMTOOL_HINT)
    return subprocess.run(
        [tool, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    files = [str(path.relative_to(REPO)) for path in rule_files()]
    assert files, "no rule files in prometheus/rules"
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    files = [str(path.relative_to(REPO)) for path in sorted(RULE_TESTS_DIR.glob("*.yml"))]
    assert files, "no promtool tests in prometheus/tests"
    result = promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_loads_every_rule_file() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    patterns = config["rule_files"]
    loaded = {path for pattern in patterns for path in PROMETHEUS_CONFIG.parent.glob(pattern)}
    assert loaded == set(rule_files())


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_alert_conventions(alert: dict[str, object]) -> None:
    name = str(alert["alert"])
    assert re.fullmatch(r"LemonData[A-Z][A-Za-z]+", name)
    labels = alert.get("labels")
    assert isinstance(labels, dict)
    assert labels.get("severity") in ("critical", "warning")
    annotations = alert.get("annotations")
    assert isinstance(annotations, dict)
    for key in ("summary", "description"):
        assert len(str(annotations.get(key, "")).split()) >= 4, f"{name}: {key} too short"
    assert annotations.get("runbook_url") == RUNBOOK_BASE + name.lower()
    assert "for" in alert, f"{name} needs a for: duration"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))


def test_every_alert_is_listed_in_the_threshold_table() -> None:
    text = (RULES_DIR / "lemondata-exporter.alerts.yml").read_text(encoding="utf-8")
    header = text.split("groups:", 1)[0]
    for alert in alerts():
        assert alert["alert"] in header, f"{alert['alert']} missing from the table at the top"


def _rule_tests() -> list[dict[str, object]]:
    cases = []
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for test in load_yaml(path)["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_firing_and_a_quiet_unit_test(alert: dict[str, object]) -> None:
    cases = [case for case in _rule_tests() if case["alertname"] == alert["alert"]]
    assert any(case.get("exp_alerts") for case in cases), "no test where it fires"
    assert any(not case.get("exp_alerts") for case in cases), "no test where it stays quiet"


def test_rules_use_only_documented_metrics() -> None:
    documented, prefixes = documented_metrics()
    known = documented | recorded_names() | {"up"}
    for rule in rules():
        unknown = {
            name
            for name in metric_names(rule["expr"])
            if name not in known and not name.startswith(prefixes)
        }
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_recording_rule_names_follow_the_convention() -> None:
    for name in recorded_names():
        level, metric, operations = name.split(":")
        assert level and operations, name
        assert metric.startswith("lemondata_"), name
