"""Every dashboard query against a real Prometheus that scraped the real exporter.

On loopback, in a temporary folder: the simulator (time x60) with a feeder that
creates tasks of four models with mixed outcomes (completed, failed by the
caller, failed by the service, cancelled) and appends them to the file the
exporter watches; the exporter polling it; a real Prometheus scraping the
exporter three times, as deployments in three clusters:

- job `lemondata-exporter`, `cluster="eu-1"`: what the default knobs select;
- job `ai-tasks` in `region="us-2"` and in `region="eu-3"`, `env="prod"`:
  selected by the other knobs (another selector, `region` as the cluster
  label, multi-cluster on).

Prometheus loads the recording rules rendered from the same two configs
(monitoring/rules.py), so the dashboards' recorded series exist as shipped.
Then, for both renderings, every query of every panel is run as Grafana would
with "All" selected: it must be accepted, return data where the scenario has
data, and never return NaN in a table or stat.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from monitoring import dashboards as board
from monitoring import rules
from monitoring.config import BundleConfig
from tests.e2e.harness import ExporterProcess, free_port, wait_for
from tests.monitoring.support import panels, require_tool, substitute_variables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

API_KEY = "sk-sim"
DEFAULT = BundleConfig()
OTHER = BundleConfig(
    selector='job="ai-tasks", env="prod"',
    topology_labels=("region", "namespace", "job"),
    cluster_label="region",
    multi_cluster=True,
    dashboard_uid_prefix="ai",
)
CONFIGS = {"default": DEFAULT, "other": OTHER}
# Where each config's deployment is scraped from, as Prometheus target labels.
# scrape config name -> target labels (`job` among them)
TARGETS = {
    "lemondata-exporter": {"job": "lemondata-exporter", "cluster": "eu-1", "namespace": "ai"},
    "ai-tasks-us": {"job": "ai-tasks", "region": "us-2", "namespace": "ai", "env": "prod"},
    "ai-tasks-eu": {"job": "ai-tasks", "region": "eu-3", "namespace": "ai", "env": "prod"},
}
# (model, kind, outcome, reason) in turn: most complete, some fail by the
# caller's fault, some by the service's, one in eight is cancelled.
PLAN = (
    ("flux-pro", "image", "completed", None),
    ("flux-schnell", "image", "completed", None),
    ("veo-3", "video", "completed", None),
    ("flux-pro", "image", "failed", "content_policy"),
    ("dall-e-3", "image", "completed", None),
    ("flux-schnell", "image", "failed", "upstream_error"),
    ("dall-e-3", "image", "cancelled", None),
    ("flux-pro", "image", "completed", None),
)
TASKS_PER_SECOND = 4.0
# Panels that may be empty in this scenario, and why.
MAY_BE_EMPTY = {
    # every status answer of the simulator carries `updated`: no uncertainty to export
    "Duration uncertainty (p50, p90)",
}


class Feeder:
    """Creates tasks on the simulator by PLAN and appends them to the exporter's task file."""

    def __init__(self, simulator: Any, path: Path) -> None:
        self.simulator = simulator
        self.path = path
        self.created = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            model, kind, outcome, reason = PLAN[self.created % len(PLAN)]
            body = self.simulator.create_task(
                model, kind, outcome=outcome, reason=reason, lost=False
            )
            line = {"task_id": body["task_id"], "model": model, "poll_url": body.get("poll_url")}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            self.created += 1
            self._stop.wait(1.0 / TASKS_PER_SECOND)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def rule_files(name: str, config: BundleConfig) -> dict[str, str]:
    """The rules rendered from `config`, one file name per config."""
    return {
        f"{name}-{Path(path).name}": text
        for path, text in rules.render(config).items()
        if path.startswith("prometheus/rules/")
    }


@dataclass
class Stack:
    prometheus: str
    exporter: ExporterProcess
    feeder: Feeder
    log: Path

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.prometheus}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def tails(self) -> str:
        return (
            "--- prometheus ---\n"
            + "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            + "\n--- exporter ---\n"
            + "\n".join(self.exporter.log_text().splitlines()[-15:])
        )


@pytest.fixture(scope="module", name="stack")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus", hint="Debian package prometheus")
    from exporter.simulator import Simulator, SimulatorSettings

    tmp = tmp_path_factory.mktemp("dashboards")
    simulator = Simulator(
        SimulatorSettings(port=0, api_keys=(API_KEY,), time_scale=60.0, seed=11, lost_fraction=0.0)
    )
    simulator.start()
    task_file = tmp / "tasks.jsonl"
    task_file.touch()
    feeder = Feeder(simulator, task_file)
    exporter = ExporterProcess(
        tmp,
        {
            "api": {"base_url": simulator.url, "timeout_seconds": 2},
            "polling": {
                "cycle_interval_seconds": 0.5,
                "task_interval_seconds": 1,
                "requests_per_second": 15,
            },
            "store": {"path": str(tmp / "store.db")},
            "discovery": {"interval_seconds": 0.5, "files": [{"path": str(task_file)}]},
        },
        api_key=API_KEY,
    )
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    for name, config in CONFIGS.items():
        for file_name, text in rule_files(name, config).items():
            (rules_dir / file_name).write_text(text, encoding="utf-8")
    port = free_port()
    address = f"127.0.0.1:{exporter.port}"
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [address], "labels": labels}],
            }
            for job, labels in TARGETS.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
    log = tmp / "prometheus.log"
    exporter.start()
    feeder.start()
    with log.open("wb") as handle:
        prometheus = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    stack = Stack(f"http://127.0.0.1:{port}", exporter, feeder, log)
    try:
        wait_for(
            lambda: requests.get(f"{stack.prometheus}/-/ready", timeout=2).ok, 30, "Prometheus"
        )
        yield stack
    finally:
        prometheus.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            prometheus.wait(10)
        if prometheus.poll() is None:
            prometheus.kill()
            prometheus.wait(5)
        feeder.stop()
        with contextlib.suppress(Exception):
            exporter.terminate()
        simulator.stop()


def _targets(config_name: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    files = board.render(CONFIGS[config_name])
    return [
        (path, panel, target)
        for path, text in files.items()
        if path.endswith(".json")
        for panel in panels(json.loads(text))
        for target in panel["targets"]
    ]


def _panel(config_name: str, title: str) -> dict[str, Any]:
    found = {id(p): p for _, p, _ in _targets(config_name) if p["title"] == title}
    assert len(found) == 1, title
    return next(iter(found.values()))


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def test_every_rule_group_is_healthy(stack: Stack) -> None:
    def healthy() -> list[dict[str, Any]] | None:
        rules = [r for g in stack.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    wait_for(healthy, 30, "every rule evaluated with health ok")


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_every_panel_query_runs_and_shows_data(stack: Stack, config_name: str) -> None:
    targets = _targets(config_name)
    titles = {panel["title"] for _, panel, _ in targets}
    assert titles >= MAY_BE_EMPTY

    def results() -> dict[str, list[list[float]]]:
        found: dict[str, list[list[float]]] = {}
        for _, panel, target in targets:
            numbers = _numbers(stack.query(substitute_variables(target["expr"])))
            found.setdefault(panel["title"], []).append(numbers)
        return found

    def empty(current: dict[str, list[list[float]]]) -> list[str]:
        return sorted(
            title
            for title, per_target in current.items()
            if title not in MAY_BE_EMPTY
            and not any(math.isfinite(n) for numbers in per_target for n in numbers)
        )

    try:
        current = wait_for(
            lambda: (lambda r: r if not empty(r) else None)(results()),
            90,
            "every panel to show data",
            every=2,
        )
    except AssertionError:
        raise AssertionError(f"panels without data: {empty(results())}\n{stack.tails()}") from None
    # the scenario: failures of both classes, tasks of every model
    assert current["Failures per minute: user vs service"]


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_stats_and_tables_never_show_nan_or_a_negative(stack: Stack, config_name: str) -> None:
    # Wait for a finished task of every model, then read every instant query.
    wait_for(
        lambda: len(stack.query("sum by (model) (lemondata:store_tasks_finished:max) > 0")) >= 4,
        60,
        "finished tasks of every model",
        every=1,
    )
    for path, panel, target in _targets(config_name):
        if panel["type"] not in ("stat", "table"):
            continue
        expr = substitute_variables(target["expr"])
        for number in _numbers(stack.query(expr)):
            assert not math.isnan(number) and not math.isinf(number), (
                path,
                panel["title"],
                expr,
            )
            # no count, age, ratio or "resets in" below zero; only a budget can be overspent
            if "budget left" not in panel["title"]:
                assert number >= 0, (path, panel["title"], number)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_time_series_panels_as_range_queries(stack: Stack, config_name: str) -> None:
    """What Grafana sends for a graph: a range query with a step, over the last minute."""
    targets = [
        (panel, target)
        for _, panel, target in _targets(config_name)
        if panel["type"] in ("timeseries", "heatmap")
    ]
    assert all(target.get("range") is True for _, target in targets)
    wait_for(lambda: stack.query("lemondata:store_tasks_finished:max"), 60, "recorded series")
    end = float(stack.api("query", query="time()")["result"][1])  # Prometheus's clock
    for panel, target in targets:
        data = stack.api(
            "query_range",
            query=substitute_variables(target["expr"]),
            start=end - 60,
            end=end,
            step=2,
        )
        assert data["resultType"] == "matrix", panel["title"]
        if panel["title"] not in MAY_BE_EMPTY:
            assert any(series["values"] for series in data["result"]), panel["title"]


def test_the_model_table_has_a_row_per_model(stack: Stack) -> None:
    table = _panel("default", "Models over the time range")
    by_ref: dict[str, dict[str, float]] = {}
    for target in table["targets"]:
        result = stack.query(substitute_variables(target["expr"]))
        by_ref[target["refId"]] = {s["metric"]["model"]: float(s["value"][1]) for s in result}
    models = {model for model, *_ in PLAN}
    assert set(by_ref["A"]) == models  # finished
    assert set(by_ref["C"]) == models and set(by_ref["D"]) == models  # failures at zero too
    assert by_ref["D"]["flux-pro"] > 0  # content_policy: the caller's fault
    assert by_ref["C"]["flux-schnell"] > 0  # upstream_error: the service's
    # the failure ratio counts the service's failures only
    assert by_ref["B"]["flux-schnell"] > 0
    assert by_ref["B"]["flux-pro"] == 0


def _label_values(stack: Stack, variable_query: str) -> set[str]:
    """A `label_values(selector, label)` variable, as Grafana's Prometheus source asks."""
    inner = variable_query.removeprefix("label_values(").removesuffix(")")
    selector, label = inner.rsplit(", ", 1)
    values: list[str] = stack.api(
        f"label/{label}/values", **{"match[]": substitute_variables(selector)}
    )
    return set(values)


def test_variables_select_their_own_deployment(stack: Stack) -> None:
    wait_for(lambda: stack.query("lemondata_store_tasks_finished_total"), 30, "a first scrape")
    for config_name, expected in (
        ("default", {"job": {"lemondata-exporter"}}),
        ("other", {"cluster": {"us-2", "eu-3"}, "job": {"ai-tasks"}}),
    ):
        dashboard = json.loads(board.render(CONFIGS[config_name])[board.TASKS_FILE])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        for name, values in expected.items():
            assert _label_values(stack, variables[name]["query"]) == values, config_name
        models = _label_values(stack, variables["model"]["query"])
        assert models == {model for model, *_ in PLAN}, config_name


def test_filtering_by_cluster_keeps_deployments_apart(stack: Stack) -> None:
    """With a cluster chosen, the other renderings' panel shows that cluster's series only."""
    finished = _panel("other", "Finished")
    expr = finished["targets"][0]["expr"]
    for region in ("us-2", "eu-3"):
        chosen = substitute_variables(expr.replace("$cluster", region))
        wait_for(lambda q=chosen: _numbers(stack.query(q)), 60, f"finished tasks in {region}")
    # eu-1 is a cluster of the default deployment, whose clusters are another label
    elsewhere = substitute_variables(expr.replace("$cluster", "eu-1"))
    assert stack.query(elsewhere) == []


def test_recorded_series_keep_the_cluster_label(stack: Stack) -> None:
    """Every recorded series a dashboard reads keeps the configured cluster label."""
    recorded = {
        metric
        for _, _, target in _targets("other")
        for metric in re.findall(r"lemondata(?:_slo)?:[a-z_]+:[a-z_0-9]+", target["expr"])
    }
    assert len(recorded) > 5
    for metric in sorted(recorded):
        expr = f'count by (region) ({metric}{{job="ai-tasks"}})'
        wait_for(
            lambda e=expr: {s["metric"].get("region") for s in stack.query(e)} >= {"us-2", "eu-3"},
            60,
            f"{metric} in both regions",
        )
