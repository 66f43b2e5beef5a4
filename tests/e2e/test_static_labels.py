"""`metrics.static_labels` on every series, through a real exporter and promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import RESERVED_LABELS, Config
from exporter.simulator import Simulator
from tests.harness import ExporterProcess, total, wait_for
from tests.harness.fixtures import KEY, create_tasks, exporter_config

pytestmark = pytest.mark.integration
STATIC = {"env": "prod", "region": "eu-west-1"}


def label_sets(text: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_series_carries_the_static_labels(simulator: Simulator, tmp_path: Path) -> None:
    config = exporter_config(simulator.url, tmp_path)
    config["metrics"] = {"static_labels": STATIC}
    exporter = ExporterProcess(tmp_path, config, KEY).start()
    try:
        create_tasks(simulator, tmp_path / "tasks.jsonl", 20)
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks_finished_total") >= 5,
            60,
            "finished tasks",
        )
        text = exporter.metrics_text()
        restricted = requests.get(
            f"{exporter.url}/metrics", params={"name[]": "lemondata_poll_cycles_total"}, timeout=5
        ).text
        openmetrics = requests.get(
            f"{exporter.url}/metrics",
            timeout=5,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        ).text
    finally:
        exporter.terminate()
    for served in (text, restricted):
        labels = label_sets(served)
        assert labels and all(sample.items() >= STATIC.items() for sample in labels)
    assert 'env="prod"' in openmetrics and openmetrics.rstrip().endswith("# EOF")
    assert {"lemondata_poll_cycles"} == {
        family.name for family in text_string_to_metric_families(restricted)
    }
    # The reserved list covers every label the exporter's own series use.
    own = {name for labels in label_sets(text) for name in labels} - set(STATIC)
    assert own <= RESERVED_LABELS, own - RESERVED_LABELS
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"model": "x"}, "'model' is a label the exporter or Prometheus sets"),
        ({"instance": "x"}, "'instance' is a label the exporter or Prometheus sets"),
        ({"__name__": "x"}, "'__name__' is not a label name"),
        ({"2fast": "x"}, "'2fast' is not a label name"),
        ({"env": ""}, "the value of 'env' must be 1 to 256 characters"),
        ({f"l{n}": "x" for n in range(17)}, "at most 16 labels"),
    ],
)
def test_static_labels_that_would_clash_are_refused(labels: dict[str, str], problem: str) -> None:
    from exporter.config import check_config_data

    report = check_config_data({"metrics": {"static_labels": labels}}, "config.yaml")
    (line,) = report.problems
    assert line.startswith(f"config.yaml: metrics.static_labels: {problem}")


def test_no_static_labels_by_default() -> None:
    assert Config().metrics.static_labels == {}
