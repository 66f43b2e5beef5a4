"""Every inhibit rule of the rendered Alertmanager configuration, in a real Alertmanager.

Alerts are posted straight to Alertmanager's API (as Prometheus would) and the
API's `inhibitedBy` says which ones are muted: amtool cannot test inhibition.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from monitoring import alertmanager
from monitoring.config import BundleConfig
from tests.harness import alertmanager_process, free_port
from tests.monitoring.support import require_tool
from tests.monitoring.test_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPOLOGY = {"cluster": "c1", "namespace": "ml", "job": "lemondata"}
OTHER_TOPOLOGY = {**TOPOLOGY, "namespace": "other"}
A = {**TOPOLOGY, "instance": "10.0.0.1:9847"}
B = {**TOPOLOGY, "instance": "10.0.0.2:9847"}


@pytest.fixture(scope="module", name="am")
def _am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_tool(
        "prometheus-alertmanager", "alertmanager", hint="Debian package prometheus-alertmanager"
    )
    tmp = tmp_path_factory.mktemp("inhibition")
    config = alertmanager.config(BundleConfig())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = "http://127.0.0.1:9/"  # never reached: group_wait is long
    config["route"]["group_wait"] = "1h"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    logs: dict[str, Path] = {}
    with alertmanager_process(binary, path, tmp, free_port(), logs) as url:
        yield url


def post(am: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    body = [
        {
            "labels": labels,
            "startsAt": now.isoformat(),
            "endsAt": (now + datetime.timedelta(minutes=10)).isoformat(),
        }
        for labels in alerts
    ]
    requests.post(f"{am}/api/v2/alerts", json=body, timeout=10).raise_for_status()


def state(am: str, **labels: str) -> dict[str, Any]:
    found = [
        alert
        for alert in requests.get(f"{am}/api/v2/alerts", timeout=10).json()
        if all(alert["labels"].get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (labels, found)
    status: dict[str, Any] = found[0]["status"]
    return status


def alert(name: str, severity: str, labels: dict[str, str], **extra: str) -> dict[str, str]:
    return {"alertname": name, "severity": severity, **labels, **extra}


CASES = [
    # (source, targets muted, targets not muted)
    (
        alert("LemonDataExporterDown", "warning", A),
        [
            alert("LemonDataPollLagHigh", "warning", A),
            alert("LemonDataDiscoveryFailing", "warning", A, source="file"),
        ],
        [alert("LemonDataPollLagHigh", "warning", B)],
    ),
    (
        alert("LemonDataAPIKeyRejected", "critical", A),
        [
            alert("LemonDataAPIDown", "critical", B),
            alert("LemonDataAvailabilityBudgetBurn", "critical", TOPOLOGY, model="m", long="1h"),
            alert("LemonDataTasksFailingLowVolume", "critical", TOPOLOGY, model="m"),
            alert("LemonDataTasksStuckWaiting", "warning", TOPOLOGY),
        ],
        [
            alert("LemonDataTasksStuckWaiting", "warning", OTHER_TOPOLOGY),
            alert("LemonDataExporterRestarting", "warning", A),
        ],
    ),
    (
        # Several accounts: one account's rejected key mutes that account's
        # alerts only; task alerts, which no account owns, stay.
        alert("LemonDataAPIKeyRejected", "critical", A, account="team-c"),
        [alert("LemonDataAPIDown", "critical", B, account="team-c")],
        [
            alert("LemonDataAPIDown", "critical", A, account="team-a"),
            alert("LemonDataTasksStuckWaiting", "warning", TOPOLOGY),
        ],
    ),
    (
        alert("LemonDataAPIDown", "critical", A),
        [alert("LemonDataTaskStuckProcessing", "warning", TOPOLOGY, model="m")],
        [alert("LemonDataExporterRestarting", "warning", B)],
    ),
    (
        alert("LemonDataAvailabilityBudgetBurn", "critical", TOPOLOGY, model="m", long="1h"),
        [
            alert("LemonDataAvailabilityBudgetBurn", "warning", TOPOLOGY, model="m", long="6h"),
            alert("LemonDataTasksFailingLowVolume", "critical", TOPOLOGY, model="m"),
        ],
        [alert("LemonDataTasksFailingLowVolume", "critical", TOPOLOGY, model="other-model")],
    ),
]


def _apart(labels: dict[str, str], index: int) -> dict[str, str]:
    """The labels of case `index`: namespaces of their own, so cases never mute each other."""
    return {**labels, "namespace": f"{labels['namespace']}-{index}"}


@pytest.mark.parametrize(
    ("index", "source", "muted", "kept"),
    [(i, *case) for i, case in enumerate(CASES)],
    ids=[case[0]["alertname"] for case in CASES],
)
def test_inhibit_rules(
    am: str,
    index: int,
    source: dict[str, str],
    muted: list[dict[str, str]],
    kept: list[dict[str, str]],
) -> None:
    source = _apart(source, index)
    muted = [_apart(labels, index) for labels in muted]
    kept = [_apart(labels, index) for labels in kept]
    post(am, [source, *muted, *kept])

    def settled() -> bool:
        return all(state(am, **labels)["inhibitedBy"] for labels in muted)

    wait_until(settled, 20, f"{[m['alertname'] for m in muted]} inhibited by {source}")
    for labels in kept:
        assert not state(am, **labels)["inhibitedBy"], labels
    inhibitors = state(am, **source)["inhibitedBy"]
    everything = requests.get(f"{am}/api/v2/alerts", timeout=10).json()
    by = [a["labels"] for a in everything if a["fingerprint"] in inhibitors]
    assert not inhibitors, by
