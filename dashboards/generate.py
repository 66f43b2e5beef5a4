"""Generate the Grafana dashboards of lemondata-exporter.

The JSON files next to this script are generated: edit this file, then run

    python dashboards/generate.py

and commit both. A test fails when the committed JSON differs from what this
script writes. Plain dicts only, so no dependency beyond the standard library.

Every query filters by the `job` and `instance` variables (and `model` where
the metric has it) and sums over replicas, so the dashboards work for one
exporter or several. Most task and API rates come from the recording rules in
prometheus/rules/lemondata-exporter.recording.yml: load them too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Panel = dict[str, Any]

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
MSEL = SEL + ', model=~"$model"'
PER_MINUTE = "suffix: /min"

# thresholds of the alerts (prometheus/rules/lemondata-exporter.alerts.yml),
# drawn on the panels that show the same quantity
FAILURE_RATIO_ALERT = 0.25
WAITING_AGE_ALERT = 900
POLL_LAG_ALERT = 60
NOT_POLLING_ALERT = 180
DURATION_ALERT = 300

FINISHED = "instance_model_status:lemondata_tasks_finished:rate5m"
FAILURES = "instance_model_reason:lemondata_task_failures:rate5m"
DURATION_BUCKETS = "instance_model:lemondata_task_duration_seconds_bucket:rate5m"
PENDING_BUCKETS = "instance_model:lemondata_task_pending_seconds_bucket:rate5m"
REQUESTS = "instance_code:lemondata_api_requests:rate5m"
ERRORS = "instance_kind:lemondata_api_errors:rate5m"
REQUEST_BUCKETS = "instance:lemondata_api_request_duration_seconds_bucket:rate5m"
FAILED_STATUSES = 'status=~"failed|expired|timeout"'


def failure_ratio(by: str) -> str:
    """Failed, expired and timed-out tasks over finished ones (cancelled left out)."""
    group = f" by ({by})" if by else ""
    zero = f"0 * sum{group} ({FINISHED}{{{MSEL}}})" if by else "vector(0)"
    return (
        f"(sum{group} ({FINISHED}{{{MSEL}, {FAILED_STATUSES}}}) or {zero})"
        f' / sum{group} ({FINISHED}{{{MSEL}, status!="cancelled"}})'
    )


def quantile(q: float, buckets: str, by: str, selector: str) -> str:
    """A quantile from bucket rates, `buckets` being a recorded rate of `_bucket` series."""
    return f"histogram_quantile({q}, sum by ({by}) ({buckets}{{{selector}}}))"


def raw_quantile(q: float, bucket_metric: str, by: str) -> str:
    """A quantile from a `_bucket` counter without a recording rule."""
    return (
        f"histogram_quantile({q}, sum by ({by}) (rate({bucket_metric}{{{SEL}}}[$__rate_interval])))"
    )


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
        "refId": ref,
    }
    result.update(extra)
    return result


def targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


GREEN_ONLY = thresholds(("green", None))


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: list[dict[str, Any]],
    *,
    stack: bool = False,
    bars: bool = False,
    alert_at: float | None = None,
    max_value: float | None = None,
) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else (25 if stack else 10),
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "line" if alert_at is not None else "off"},
    }
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "thresholds": (
            thresholds(("green", None), ("red", alert_at)) if alert_at is not None else GREEN_ONLY
        ),
    }
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "calcs": ["lastNotNull", "max"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": queries,
    }


def stat(
    title: str,
    description: str,
    unit: str,
    queries: list[dict[str, Any]],
    *,
    steps: dict[str, Any] = GREEN_ONLY,
    mappings: list[dict[str, Any]] | None = None,
    graph: bool = True,
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": steps,
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "background" if mappings else "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
            "wideLayout": True,
        },
        "targets": queries,
    }


def heatmap(title: str, description: str, y_unit: str, query: dict[str, Any]) -> Panel:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": "short", "custom": {}}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "exponent": 0.5,
                "fill": "dark-orange",
                "mode": "scheme",
                "scale": "exponential",
                "scheme": "Oranges",
                "steps": 64,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": y_unit},
        },
        "targets": [query],
    }


def table(
    title: str,
    description: str,
    unit: str,
    queries: list[dict[str, Any]],
    *,
    columns: dict[str, tuple[str, str]],
    hide: tuple[str, ...] = ("Time",),
) -> Panel:
    """An instant table; `columns` maps a frame field to (display name, unit)."""
    overrides = [
        {
            "matcher": {"id": "byName", "options": field},
            "properties": [{"id": "unit", "value": column_unit}],
        }
        for field, (_, column_unit) in columns.items()
    ]
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                "thresholds": GREEN_ONLY,
            },
            "overrides": overrides,
        },
        "options": {"cellHeight": "sm", "showHeader": True, "footer": {"show": False}},
        "targets": [
            dict(q, format="table", instant=True, range=False, legendFormat="__auto")
            for q in queries
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": dict.fromkeys(hide, True),
                    "renameByName": {field: name for field, (name, _) in columns.items()},
                },
            },
        ],
    }


UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"color": "red", "index": 0, "text": "DOWN"},
            "1": {"color": "green", "index": 1, "text": "UP"},
        },
    }
]


class Layout:
    """Places panels left to right in rows of 24 columns and numbers them."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._next_id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def add(self, panel: Panel, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        placed = {"id": self._next_id(), "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        placed.update(panel)
        self.panels.append(placed)
        self.x += w
        self.row_height = max(self.row_height, h)


def variables() -> dict[str, Any]:
    def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "options": [],
                "refresh": 1,
                "regex": "",
                "hide": 0,
            },
            query_variable("job", "Job", "label_values(lemondata_exporter_build_info, job)"),
            query_variable(
                "instance",
                "Instance",
                'label_values(lemondata_exporter_build_info{job=~"$job"}, instance)',
            ),
            query_variable(
                "model",
                "Model",
                f"label_values(lemondata_tasks_finished_total{{{SEL}}}, model)",
            ),
        ]
    }


def dashboard(uid: str, title: str, description: str, layout: Layout) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lemondata", "lemondata-exporter"],
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "title": "LemonData dashboards",
                "type": "dashboards",
                "tags": ["lemondata"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "liveNow": False,
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "templating": variables(),
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "version": 1,
        "weekStart": "",
    }


def tasks_dashboard() -> dict[str, Any]:
    lay = Layout()
    lay.row("Now")
    lay.add(
        stat(
            "Waiting",
            "Tasks not started yet: pending upstream, or not yet answered by the API "
            "(status unknown). All models: the task gauge has no model label.",
            "short",
            targets((f'sum(lemondata_tasks{{{SEL}, status=~"unknown|pending"}})', "waiting")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Running",
            "Tasks the API reports as processing now. All models.",
            "short",
            targets((f'sum(lemondata_tasks{{{SEL}, status="processing"}})', "running")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Oldest waiting task",
            "Age (now - created) of the oldest task still pending or not yet answered. "
            f"LemonDataTasksStuckWaiting fires above {WAITING_AGE_ALERT} s.",
            "s",
            targets(
                (
                    f'max(lemondata_task_oldest_age_seconds{{{SEL}, status=~"unknown|pending"}})',
                    "oldest waiting",
                )
            ),
            steps=thresholds(("green", None), ("orange", 300), ("red", WAITING_AGE_ALERT)),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Finished",
            "Tasks that reached a finished status (completed, failed, cancelled, expired, "
            "timeout) per minute, averaged over 5 minutes, selected models.",
            PER_MINUTE,
            targets((f"sum({FINISHED}{{{MSEL}}}) * 60", "finished")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "Failure ratio",
            "Share of the tasks finished in the last 5 minutes that failed, expired or timed "
            "out; cancelled tasks are left out. Selected models together. "
            f"LemonDataTaskFailureRatioHigh fires per model above {FAILURE_RATIO_ALERT:.0%}.",
            "percentunit",
            targets((failure_ratio(""), "failure ratio")),
            steps=thresholds(("green", None), ("orange", 0.1), ("red", FAILURE_RATIO_ALERT)),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat(
            "p95 time to completion",
            "95th percentile of created -> completed over the last 5 minutes, selected "
            f"models together. LemonDataTaskDurationHigh fires per model above {DURATION_ALERT} s "
            "(900 s for video models).",
            "s",
            targets((quantile(0.95, DURATION_BUCKETS, "le", MSEL), "p95")),
            steps=thresholds(("green", None), ("orange", 120), ("red", DURATION_ALERT)),
        ),
        w=4,
        h=4,
    )

    lay.row("Throughput and failures")
    lay.add(
        timeseries(
            "Tasks waiting and running",
            "Unfinished tasks in the exporters' stores by last seen status: unknown (not yet "
            "answered), pending, processing. All models.",
            "short",
            targets(
                (
                    "sum by (status) "
                    f'(lemondata_tasks{{{SEL}, status=~"unknown|pending|processing"}})',
                    "{{status}}",
                )
            ),
            stack=True,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Finished per minute by status",
            "Tasks that reached each finished status, per minute (5-minute average), "
            "selected models.",
            PER_MINUTE,
            targets((f"sum by (status) ({FINISHED}{{{MSEL}}}) * 60", "{{status}}")),
            stack=True,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Failure ratio per model",
            "Per model, the share of tasks finished in the last 5 minutes that failed, expired "
            "or timed out (cancelled left out). The red line is the alert threshold.",
            "percentunit",
            targets((failure_ratio("model"), "{{model}}")),
            alert_at=FAILURE_RATIO_ALERT,
            max_value=1,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Failures per minute by reason",
            "Failed tasks per minute (5-minute average) by the reason classified from their "
            "error text, selected models. A sudden band is a burst of one reason.",
            PER_MINUTE,
            targets((f"sum by (reason) ({FAILURES}{{{MSEL}}}) * 60", "{{reason}}")),
            stack=True,
            bars=True,
        ),
        w=12,
        h=8,
    )
    lay.add(
        table(
            "Models, last 5 minutes",
            "One line per model: finished tasks per minute, failure ratio and time to "
            "completion (p50, p95) over the last 5 minutes.",
            "short",
            [
                target(f"sum by (model) ({FINISHED}{{{MSEL}}}) * 60", ref="A"),
                target(failure_ratio("model"), ref="B"),
                target(quantile(0.5, DURATION_BUCKETS, "le, model", MSEL), ref="C"),
                target(quantile(0.95, DURATION_BUCKETS, "le, model", MSEL), ref="D"),
            ],
            columns={
                "model": ("Model", "none"),
                "Value #A": ("Finished / min", "short"),
                "Value #B": ("Failure ratio", "percentunit"),
                "Value #C": ("p50 time to completion", "s"),
                "Value #D": ("p95 time to completion", "s"),
            },
        ),
        w=24,
        h=8,
    )

    lay.row("Time to completion")
    lay.add(
        timeseries(
            "Time to completion per model (p50, p90, p99)",
            "Quantiles of created -> completed for tasks that completed in the last 5 minutes, "
            "per model. Failed and timed-out tasks are not included.",
            "s",
            targets(
                *(
                    (
                        quantile(q, DURATION_BUCKETS, "le, model", MSEL),
                        f"p{int(q * 100)} {{{{model}}}}",
                    )
                    for q in (0.5, 0.9, 0.99)
                )
            ),
        ),
        w=12,
        h=9,
    )
    lay.add(
        heatmap(
            "Time to completion distribution",
            "How many tasks completed in each duration bucket per interval, selected models. "
            "A band moving up means tasks getting slower.",
            "s",
            target(
                "sum by (le) (increase(lemondata_task_duration_seconds_bucket"
                f'{{{MSEL}, status="completed"}}[$__rate_interval]))',
                "{{le}}",
                format="heatmap",
            ),
        ),
        w=12,
        h=9,
    )
    lay.add(
        timeseries(
            "Time pending per model (p50, p90)",
            "Quantiles of created -> first seen processing, per model: how long tasks wait in "
            "the upstream queue before they start.",
            "s",
            targets(
                *(
                    (
                        quantile(q, PENDING_BUCKETS, "le, model", MSEL),
                        f"p{int(q * 100)} {{{{model}}}}",
                    )
                    for q in (0.5, 0.9)
                )
            ),
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Oldest unfinished task by status",
            "Age (now - created) of the oldest task in each unfinished status. All models. "
            "The red line is the threshold of LemonDataTasksStuckWaiting (unknown and pending).",
            "s",
            targets(
                (f"max by (status) (lemondata_task_oldest_age_seconds{{{SEL}}})", "{{status}}")
            ),
            alert_at=WAITING_AGE_ALERT,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Duration uncertainty (p50, p90)",
            "For durations measured without the API's `updated` field: the time since the "
            "previous poll, i.e. how late a finish may have been seen. All models.",
            "s",
            targets(
                *(
                    (
                        raw_quantile(q, "lemondata_task_duration_uncertainty_seconds_bucket", "le"),
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.9)
                )
            ),
        ),
        w=12,
        h=8,
    )
    return dashboard(
        "lemondata-tasks",
        "LemonData tasks",
        "Asynchronous image and video generation tasks on the LemonData API, as watched by "
        "lemondata-exporter: backlog, throughput, failures and time to completion.",
        lay,
    )


def exporter_dashboard() -> dict[str, Any]:
    lay = Layout()
    lay.row("Exporter")
    lay.add(
        stat(
            "Exporter up",
            "Whether Prometheus could scrape each exporter replica (the `up` series). "
            "LemonDataExporterDown fires after 5 minutes down.",
            "none",
            targets((f"sum by (instance) (up{{{SEL}}})", "{{instance}}")),
            steps=thresholds(("red", None), ("green", 1)),
            mappings=UP_MAPPINGS,
            graph=False,
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Since last poll cycle",
            "Seconds since each replica last finished a poll cycle. "
            f"LemonDataExporterNotPolling fires above {NOT_POLLING_ALERT} s.",
            "s",
            targets(
                (
                    "time() - max by (instance) "
                    f"(lemondata_last_poll_cycle_timestamp_seconds{{{SEL}}})",
                    "{{instance}}",
                )
            ),
            steps=thresholds(("green", None), ("orange", 60), ("red", NOT_POLLING_ALERT)),
        ),
        w=6,
        h=4,
    )
    lay.add(
        table(
            "Version",
            "The version each replica runs (lemondata_exporter_build_info).",
            "none",
            [
                target(
                    f"sum by (job, instance, version) (lemondata_exporter_build_info{{{SEL}}})",
                    ref="A",
                )
            ],
            columns={
                "job": ("Job", "none"),
                "instance": ("Instance", "none"),
                "version": ("Version", "none"),
            },
            hide=("Time", "Value"),
        ),
        w=12,
        h=4,
    )
    lay.add(
        timeseries(
            "Poll lag",
            "In the last poll cycle of each replica, how long the most overdue task had been "
            "due. It grows when the request budget is too small for the number of tasks. "
            "The red line is the threshold of LemonDataPollLagHigh.",
            "s",
            targets((f"max by (instance) (lemondata_poll_lag_seconds{{{SEL}}})", "{{instance}}")),
            alert_at=POLL_LAG_ALERT,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Poll cycle duration (p50, p99)",
            "Wall time of one poll cycle per replica.",
            "s",
            targets(
                *(
                    (
                        raw_quantile(
                            q, "lemondata_poll_cycle_duration_seconds_bucket", "le, instance"
                        ),
                        f"p{int(q * 100)} {{{{instance}}}}",
                    )
                    for q in (0.5, 0.99)
                )
            ),
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Poll cycles per minute",
            "Poll cycles run per minute by each replica. Zero means the poller has stopped.",
            PER_MINUTE,
            targets(
                (
                    f"sum by (instance) (rate(lemondata_poll_cycles_total{{{SEL}}}"
                    "[$__rate_interval])) * 60",
                    "{{instance}}",
                )
            ),
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Discovery per minute",
            "New tasks added to the stores per minute by each discovery source, and failed "
            "discovery reads (unreadable file, bad line).",
            PER_MINUTE,
            targets(
                (
                    f"sum by (source) (rate(lemondata_tasks_discovered_total{{{SEL}}}"
                    "[$__rate_interval])) * 60",
                    "discovered {{source}}",
                ),
                (
                    f"sum by (source) (rate(lemondata_discovery_errors_total{{{SEL}}}"
                    "[$__rate_interval])) * 60",
                    "errors {{source}}",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Exporter memory",
            "Resident memory of each exporter process.",
            "bytes",
            targets(
                (f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "{{instance}}")
            ),
        ),
        w=8,
        h=8,
    )

    lay.row("Upstream API")
    lay.add(
        stat(
            "API up",
            "Whether the last status request of each replica got a usable answer (2xx, or "
            "404 for an expired task). LemonDataAPIDown fires after 5 minutes down.",
            "none",
            targets((f"min by (instance) (lemondata_api_up{{{SEL}}})", "{{instance}}")),
            steps=thresholds(("red", None), ("green", 1)),
            mappings=UP_MAPPINGS,
            graph=False,
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "API error ratio",
            "Share of status requests in the last 5 minutes that failed or got an unusable "
            "answer (404 for expired tasks left out). LemonDataAPIErrorRatioHigh fires above "
            "25 %.",
            "percentunit",
            targets(
                (
                    f'sum({ERRORS}{{{SEL}, kind!="not_found"}}) / sum({REQUESTS}{{{SEL}}})',
                    "error ratio",
                )
            ),
            steps=thresholds(("green", None), ("orange", 0.05), ("red", 0.25)),
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Rate limit left",
            "Share of the account's per-minute request limit left in the last answer with "
            "rate-limit headers (lowest replica). LemonDataRateLimitBudgetLow fires under 10 %.",
            "percentunit",
            targets(
                (
                    f"min(lemondata_api_rate_limit_remaining{{{SEL}}}"
                    f" / (lemondata_api_rate_limit_limit{{{SEL}}} > 0))",
                    "left",
                )
            ),
            steps=thresholds(("red", None), ("orange", 0.1), ("green", 0.25)),
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Rate limit resets in",
            "Seconds until the account's rate-limit window resets (X-RateLimit-Reset).",
            "s",
            targets(
                (
                    f"max(lemondata_api_rate_limit_reset_timestamp_seconds{{{SEL}}}) - time()",
                    "reset in",
                )
            ),
            graph=False,
        ),
        w=6,
        h=4,
    )
    lay.add(
        timeseries(
            "Status requests by code",
            "Status requests sent upstream per second (5-minute average) by HTTP code; "
            "`none` means no response came.",
            "reqps",
            targets((f"sum by (code) ({REQUESTS}{{{SEL}}})", "{{code}}")),
            stack=True,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "API errors by kind",
            "Failed or unusable status requests per second (5-minute average) by kind: "
            "unauthorized (401), payment_required (402), rate_limited (429), server_error "
            "(5xx), timeout, connection, ...",
            "reqps",
            targets((f"sum by (kind) ({ERRORS}{{{SEL}}})", "{{kind}}")),
            stack=True,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Request latency (p50, p90, p99)",
            "Latency of the status requests, all replicas together (5-minute window).",
            "s",
            targets(
                *(
                    (quantile(q, REQUEST_BUCKETS, "le", SEL), f"p{int(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                )
            ),
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Rate limit: remaining and limit",
            "X-RateLimit-Remaining against X-RateLimit-Limit of the last response that had "
            "them, per replica. The account's budget is shared with the application that "
            "creates the tasks.",
            "short",
            targets(
                (
                    f"min by (instance) (lemondata_api_rate_limit_remaining{{{SEL}}})",
                    "remaining {{instance}}",
                ),
                (
                    f"max by (instance) (lemondata_api_rate_limit_limit{{{SEL}}})",
                    "limit {{instance}}",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Requests sent and budget",
            "Status requests per second sent by each replica against its configured budget "
            "(polling.requests_per_second).",
            "reqps",
            targets(
                (
                    f"sum by (instance) (rate(lemondata_api_requests_total{{{SEL}}}"
                    "[$__rate_interval]))",
                    "sent {{instance}}",
                ),
                (
                    f"sum by (instance) (lemondata_poll_budget_requests_per_second{{{SEL}}})",
                    "budget {{instance}}",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    return dashboard(
        "lemondata-exporter",
        "LemonData exporter and API health",
        "Health of the lemondata-exporter replicas and of the LemonData API they poll: "
        "scrapes, poll cycles, request codes, errors, latency and rate limits.",
        lay,
    )


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "lemondata-tasks.json": tasks_dashboard,
    "lemondata-exporter.json": exporter_dashboard,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    for name, build in DASHBOARDS.items():
        (HERE / name).write_text(render(build), encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
