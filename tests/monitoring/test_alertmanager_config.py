"""The example Alertmanager configuration: amtool check, routing and inhibition."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.monitoring.support import ALERTMANAGER_CONFIG, REPO, alerts, load_yaml, require_tool

AMTOOL_HINT = "Debian package prometheus-alertmanager"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("amtool", hint=AMTOOL_HINT)
    return subprocess.run(
        [tool, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.integration
def test_amtool_check_config() -> None:
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=LemonDataAPIDown", "severity=critical"], "lemondata-page"),
        (["alertname=LemonDataPollLagHigh", "severity=warning"], "lemondata-ticket"),
        (["alertname=LemonDataUserFailuresHigh", "severity=info"], "lemondata-null"),
        (["alertname=Other"], "lemondata-ticket"),
    ],
)
def test_routing_by_severity(labels: list[str], receiver: str) -> None:
    result = amtool(
        "config",
        "routes",
        "test",
        "--config.file",
        str(ALERTMANAGER_CONFIG),
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grouping_and_webhooks() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert {"alertname", "cluster", "namespace", "job", "model"} <= set(config["route"]["group_by"])
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs", [])
        if receiver["name"] == "lemondata-null":
            assert not hooks, "info alerts must reach no one"
            continue
        assert hooks, f"{receiver['name']} has no webhook"
        assert all(hook.get("send_resolved") for hook in hooks)


def test_the_account_state_inhibits_the_task_alerts_it_causes() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    account = [
        rule
        for rule in config["inhibit_rules"]
        if any("LemonDataAPIKeyRejected" in m for m in rule["source_matchers"])
    ]
    assert len(account) == 1
    targets = " ".join(account[0]["target_matchers"])
    for name in (
        "LemonDataAPIDown",
        "LemonDataAvailabilityBudgetBurn",
        "LemonDataTasksFailingLowVolume",
        "LemonDataTasksStuckWaiting",
    ):
        assert name in targets
    assert "LemonDataAPIKeyRejected" not in targets


def test_inhibition_names_real_alerts() -> None:
    names = [alert["alert"] for alert in alerts()]
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert config["inhibit_rules"]
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'(\w+)\s*(=~|!~|=|!=)\s*"?([^"]*)"?', matcher)
            assert match, matcher
            label, op, value = match.groups()
            if label != "alertname" or op.startswith("!"):
                continue
            pattern = re.compile(value)
            hits = [name for name in names if pattern.fullmatch(name)]
            assert hits, f"{matcher} matches no alert"
        assert "job" in rule["equal"]
    sources = {m for rule in config["inhibit_rules"] for m in rule["source_matchers"]}
    assert any("LemonDataExporterDown" in matcher for matcher in sources)
