"""The Grafana dashboards: rendered by monitoring/dashboards.py, and well formed.

No Grafana server runs here: the JSON is checked against grafana-foundation-sdk's
own models (the Grafana 11 schema it is generated from), and the queries run
against a real Prometheus in test_dashboards_live.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from monitoring import dashboards as board
from monitoring.config import SLO, BundleConfig
from tests.monitoring.support import (
    DASHBOARDS_DIR,
    REPO,
    documented_metrics,
    metric_names,
    panels,
    selectors,
    substitute_variables,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "heatmap", "table"}
CONTRACT_RECORDS = {
    "lemondata:store_tasks_finished:max",
    "lemondata:store_task_failures:max",
    *(
        f"lemondata_slo:{sli}_errors:ratio_rate{window}"
        for sli in ("availability", "latency")
        for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    ),
}
# Non-default knobs: another selector, a cluster label with the multi-cluster
# switch on, another uid prefix and folder, other thresholds and objectives.
OTHER = BundleConfig(
    selector='job="ai-tasks", env!="dev"',
    topology_labels=("region", "namespace", "job"),
    cluster_label="region",
    multi_cluster=True,
    dashboard_uid_prefix="ai",
    grafana_folder="AI",
    thresholds={"waiting_seconds": 1234, "poll_lag_seconds": 77},
    slo=SLO(availability_objective=0.995, latency_threshold_seconds=90),
)


def rendered(config: BundleConfig) -> dict[str, dict[str, Any]]:
    return {
        path: json.loads(text)
        for path, text in board.render(config).items()
        if path.endswith(".json")
    }


DEFAULT = rendered(BundleConfig())
RENDERINGS = {"default": DEFAULT, "other": rendered(OTHER)}


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield panel, target


@pytest.fixture(
    params=[(name, path) for name in RENDERINGS for path in sorted(DEFAULT)],
    ids=lambda p: f"{p[0]}-{p[1].rsplit('/', 1)[-1]}",
    name="dashboard",
)
def _dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    name, path = request.param
    return RENDERINGS[name][path]


def test_committed_files_are_a_fresh_render() -> None:
    fresh = board.render(BundleConfig())
    committed = {f"dashboards/{path.name}" for path in DASHBOARDS_DIR.glob("*.json")}
    assert committed == {path for path in fresh if path.endswith(".json")}
    for path, text in fresh.items():
        on_disk = (REPO / path).read_text(encoding="utf-8")
        assert on_disk == text, f"{path} is stale: run python -m monitoring"


def test_the_provisioning_file_puts_the_dashboards_in_the_configured_folder() -> None:
    for folder in ("LemonData", "AI: tasks"):
        text = board.render(BundleConfig(grafana_folder=folder))[board.PROVISIONING_FILE]
        [provider] = yaml.safe_load(text)["providers"]
        assert provider["folder"] == folder
        assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_old_generator_is_gone() -> None:
    assert not (REPO / "dashboards" / "generate.py").exists()


def _differences(original: Any, decoded: Any, path: str = "") -> Iterator[str]:
    """Where `decoded` lost or changed something of `original` (additions are fine)."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        for key, value in original.items():
            if key not in decoded:
                yield f"{path}/{key}: not in the schema"
            else:
                yield from _differences(value, decoded[key], f"{path}/{key}")
    elif isinstance(original, list) and isinstance(decoded, list):
        if len(original) != len(decoded):
            yield f"{path}: {len(original)} items became {len(decoded)}"
        for i, (a, b) in enumerate(zip(original, decoded, strict=False)):
            yield from _differences(a, b, f"{path}[{i}]")
    elif original != decoded or type(original) is not type(decoded):
        yield f"{path}: {original!r} became {decoded!r}"


def test_dashboards_decode_with_the_sdk_models(dashboard: dict[str, Any]) -> None:
    """Every field survives a decode into the SDK's typed models (panel options included)."""
    register_default_plugins()
    decoded = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
    assert list(_differences(dashboard, decoded)) == []


def test_uids_and_titles() -> None:
    assert {d["uid"] for d in DEFAULT.values()} == {"lemondata-tasks", "lemondata-exporter"}
    assert {d["uid"] for d in RENDERINGS["other"].values()} == {"ai-tasks", "ai-exporter"}


def test_dashboard_settings(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["title"] and dashboard["description"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"] and variable["includeAll"]


def test_the_cluster_variable_follows_the_multi_cluster_switch() -> None:
    for dashboard in DEFAULT.values():
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert names == ["datasource", "job", "instance", "model"]
    for dashboard in RENDERINGS["other"].values():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["datasource", "cluster", "job", "instance", "model"]
        assert variables["cluster"]["query"] == (
            'label_values(lemondata_exporter_build_info{job="ai-tasks", env!="dev"}, region)'
        )
        assert 'region=~"$cluster"' in variables["job"]["query"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_is_described(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"].strip()
        assert len(panel["description"].split()) >= 5, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_stats_and_tables_are_instant_and_never_stale(dashboard: dict[str, Any]) -> None:
    """Issue 11: no `lastNotNull` of a range query, counts over the time range, "no data"."""
    for panel in panels(dashboard):
        if panel["type"] not in ("stat", "table"):
            continue
        for target in panel["targets"]:
            assert target.get("instant") is True and target.get("range") is False, panel["title"]
            expr = target["expr"]
            # a counter is read over the dashboard's range or a fixed SLO window, never
            # over a short window that would be a stale rate by the time it is read
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window == "$__range" or re.fullmatch(r"\d+[dw]", window), (
                    panel["title"],
                    expr,
                )
        if panel["type"] == "stat":
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults["noValue"], panel["title"]
            special = [m for m in defaults["mappings"] if m["type"] == "special"]
            assert special and special[0]["options"]["match"] == "null+nan", panel["title"]


def test_ratios_and_quantiles_cannot_be_nan(dashboard: dict[str, Any]) -> None:
    for panel, target in queries(dashboard):
        expr = target["expr"]
        for divisor in re.findall(r"\) / (?!\d)(.{0,12})", expr):
            assert divisor.startswith("("), (panel["title"], expr)
        if "histogram_quantile" in expr and panel["type"] != "heatmap":
            assert expr.count("histogram_quantile") == expr.count(") >= 0"), (
                panel["title"],
                expr,
            )
    tables = [p for p in panels(dashboard) if p["type"] == "table"]
    assert tables


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_query_filters_by_selector_and_variables(name: str) -> None:
    config = BundleConfig() if name == "default" else OTHER
    topology = ['job=~"$job"']
    if config.multi_cluster:
        topology.append(f'{config.cluster_label}=~"$cluster"')
    for dashboard in RENDERINGS[name].values():
        for panel, target in queries(dashboard):
            found = selectors(target["expr"])
            assert found, (panel["title"], target["expr"])
            for metric, matchers in found:
                for needle in topology:
                    assert needle in matchers, (panel["title"], metric, matchers)
                if metric.startswith("lemondata:") or metric.startswith("lemondata_slo:"):
                    # recorded series: the rules applied the selector, instance is gone
                    assert "instance" not in matchers, (panel["title"], metric)
                else:
                    assert matchers.startswith(config.selector), (panel["title"], metric)
                    assert 'instance=~"$instance"' in matchers, (panel["title"], metric)


def test_queries_with_a_model_label_filter_by_model() -> None:
    with_model, _ = documented_metrics(label="model")
    with_model |= CONTRACT_RECORDS
    assert len(with_model) > 6
    for dashboard in DEFAULT.values():
        for panel, target in queries(dashboard):
            for metric, matchers in selectors(target["expr"]):
                if metric in with_model:
                    assert 'model=~"$model"' in matchers, (panel["title"], target["expr"])


def test_queries_aggregate_over_replicas() -> None:
    for dashboard in DEFAULT.values():
        for panel, target in queries(dashboard):
            assert re.match(
                r"[\s(]*(1 - [\s(]*)?(sum|max|min|histogram_quantile|time\(\))", target["expr"]
            ), (
                panel["title"],
                target["expr"],
            )


def test_queries_use_only_known_metrics() -> None:
    documented, prefixes = documented_metrics()
    known = documented | CONTRACT_RECORDS | {"up"}
    for dashboard in DEFAULT.values():
        for panel, target in queries(dashboard):
            unknown = {
                metric
                for metric in metric_names(target["expr"])
                if metric not in known and not metric.startswith(prefixes)
            }
            assert not unknown, (panel["title"], unknown)


def test_recorded_series_are_the_contract_ones() -> None:
    used = {
        metric
        for dashboard in DEFAULT.values()
        for _, target in queries(dashboard)
        for metric in metric_names(target["expr"])
        if ":" in metric
    }
    assert used and used <= CONTRACT_RECORDS


def test_required_panels_are_present() -> None:
    exprs = " ".join(t["expr"] for d in DEFAULT.values() for _, t in queries(d))
    titles = {p["title"] for d in DEFAULT.values() for p in panels(d)}
    for needle in (
        'status=~"unknown|pending"',
        'status="processing"',
        "lemondata_task_oldest_age_seconds",
        "lemondata_task_processing_oldest_age_seconds",
        "histogram_quantile(0.5, sum by (le, model) (rate(lemondata_task_duration",
        "histogram_quantile(0.95, sum by (le, model) (rate(lemondata_task_duration",
        "histogram_quantile(0.99, sum by (le, model) (rate(lemondata_task_duration",
        "lemondata_task_pending_seconds_bucket",
        "sum by (reason)",
        "sum by (class)",
        "sum by (code)",
        "sum by (kind)",
        "lemondata_api_rate_limit_remaining",
        "lemondata_api_rate_limit_limit",
        "lemondata_api_account_state",
        "lemondata_api_last_answer_timestamp_seconds",
        "lemondata_poll_lag_seconds",
        "up{",
        "lemondata_exporter_build_info",
        "increase(lemondata:store_tasks_finished:max",
        "lemondata_slo:availability_errors:ratio_rate1h",
        "lemondata_slo:latency_errors:ratio_rate1h",
    ):
        assert needle in exprs, needle
    assert {
        "Availability error budget left",
        "Latency error budget left",
        "Availability burn rate",
        "Latency burn rate",
        "Burn rate per model",
        "Failures per minute: user vs service",
    } <= titles
    types = {panel["type"] for d in DEFAULT.values() for panel in panels(d)}
    assert types == PANEL_TYPES
    heatmaps = [p for d in DEFAULT.values() for p in panels(d) if p["type"] == "heatmap"]
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


def test_the_rows_are_in_order() -> None:
    rows = {
        path: [p["title"] for p in d["panels"] if p["type"] == "row"] for path, d in DEFAULT.items()
    }
    assert rows == {
        board.TASKS_FILE: ["Now", "Service level", "Throughput and failures", "Time to completion"],
        board.EXPORTER_FILE: ["Exporter", "Upstream API"],
    }


def test_substituted_queries_have_no_variables_left() -> None:
    for rendering in RENDERINGS.values():
        for dashboard in rendering.values():
            for _, target in queries(dashboard):
                assert "$" not in substitute_variables(target["expr"])


def _panel(rendering: dict[str, dict[str, Any]], title: str) -> dict[str, Any]:
    found = [p for d in rendering.values() for p in panels(d) if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


def _steps(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [step["value"] for step in steps if step["value"] is not None]


def test_threshold_lines_follow_the_knobs() -> None:
    for rendering, config in ((DEFAULT, BundleConfig()), (RENDERINGS["other"], OTHER)):

        def knob(name: str, config: BundleConfig = config) -> float:
            return board.alert_threshold(config, name)

        slo = config.slo
        budget = 1 - slo.availability_objective
        assert _steps(_panel(rendering, "Oldest waiting task"))[-1] == knob("waiting_seconds")
        assert _steps(_panel(rendering, "Oldest unfinished task by status")) == [
            knob("waiting_seconds")
        ]
        assert _steps(_panel(rendering, "Poll lag")) == [knob("poll_lag_seconds")]
        assert _steps(_panel(rendering, "Since last poll cycle"))[-1] == knob("not_polling_seconds")
        assert _steps(_panel(rendering, "Failure ratio per model")) == pytest.approx(
            [board.SLOW_BURN * budget, board.FAST_BURN * budget]
        )
        assert _steps(_panel(rendering, "Time to completion per model (p50, p90, p99)")) == [
            slo.latency_threshold_seconds,
            slo.video_latency_threshold_seconds,
        ]
        assert _steps(_panel(rendering, "Availability burn rate")) == [
            board.SLOW_BURN,
            board.FAST_BURN,
        ]
        budget_expr = _panel(rendering, "Availability error budget left")["targets"][0]["expr"]
        assert f"[{slo.window}]" in budget_expr
        assert budget_expr.endswith(f"/ {budget:g}")
    assert board.alert_threshold(OTHER, "waiting_seconds") == 1234


def test_each_dashboard_fits_a_client_side_kubectl_apply() -> None:
    """`kubectl apply` keeps a copy in an annotation limited to 256 KiB per object."""
    for rendering in (BundleConfig(), OTHER):
        for path, text in board.render(rendering).items():
            assert len(text.encode()) < 200 * 1024, path
