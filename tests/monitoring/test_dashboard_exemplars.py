"""The dashboards' exemplars: the latency panels ask for them, and the data source
links an exemplar's task_id to the exporter's page of that task."""

from __future__ import annotations

import json

import yaml

from exporter.api.status_page import TASK_PATH
from exporter.metrics.recorder import EXEMPLAR_LABEL
from monitoring import dashboards as board
from monitoring.config import BundleConfig
from tests.monitoring.support import REPO, panels

LATENCY_PANELS = {
    "Time to completion per model (p50, p90, p99)",
    "Time to completion distribution",
    "Time pending per model (p50, p90)",
}


def test_the_latency_panels_ask_for_exemplars_and_only_they() -> None:
    files = board.render(BundleConfig())
    tasks = json.loads(files[board.TASKS_FILE])
    asking = {
        panel["title"]
        for panel in panels(tasks)
        if any(target.get("exemplar") for target in panel["targets"])
    }
    assert asking == LATENCY_PANELS
    for panel in panels(tasks):
        if panel["title"] in LATENCY_PANELS:
            for target in panel["targets"]:
                assert target["exemplar"] is True
                assert "lemondata_task_" in target["expr"]
    exporter = json.loads(files[board.EXPORTER_FILE])
    assert not any(t.get("exemplar") for p in panels(exporter) for t in p["targets"])


def test_the_data_source_links_task_ids_to_the_task_page() -> None:
    committed = yaml.safe_load((REPO / board.DATASOURCE_FILE).read_text("utf-8"))
    (source,) = committed["datasources"]
    assert source["url"] == "http://prometheus:9090"
    (link,) = source["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == EXEMPLAR_LABEL == "task_id"
    assert link["url"] == f"http://localhost:9847{TASK_PATH}${{__value.raw}}"
    custom = board.render(BundleConfig(exporter_url="https://exporter.example.com:8443"))
    (source,) = yaml.safe_load(custom[board.DATASOURCE_FILE])["datasources"]
    (link,) = source["jsonData"]["exemplarTraceIdDestinations"]
    assert link["url"] == "https://exporter.example.com:8443/status/tasks/${__value.raw}"


def test_the_compose_prometheus_keeps_exemplars() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
