"""Shared helpers of the monitoring bundle tests: paths, tools, PromQL parsing."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "prometheus" / "rules"
RULE_TESTS_DIR = REPO / "prometheus" / "tests"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
DASHBOARDS_DIR = REPO / "dashboards"
RUNBOOK = REPO / "docs" / "runbook.md"
MONITORING_DOC = REPO / "docs" / "monitoring.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK_BASE = "https://github.com/lemondata-exporter/lemondata-exporter/blob/main/docs/runbook.md#"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(*names: str, hint: str) -> str:
    """Path of the first of `names` on PATH; skips the test, or fails it under CI."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' / '.join(names)} not found on PATH ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rules() -> Iterator[dict[str, Any]]:
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows excluded, including panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def documented_metrics(label: str | None = None) -> tuple[set[str], tuple[str, ...]]:
    """Metric names of docs/metrics.md (histogram series included) and wildcard prefixes.

    With `label`, only the metrics documented with that label.
    """
    names: set[str] = set()
    prefixes: list[str] = []
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        kind = cells[1] if len(cells) > 1 else ""
        if label is not None and f"`{label}`" not in (cells[2] if len(cells) > 2 else ""):
            continue
        for name in re.findall(r"`([a-z_:*]+)`", cells[0]):
            if name.endswith("*"):
                prefixes.append(name.rstrip("*"))
            elif kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    return names, tuple(prefixes)


SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\{([^}]*)\}")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, label matchers) of every vector selector with braces in `expr`."""
    return SELECTOR.findall(expr)


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (functions and keywords left out)."""
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "x", expr)  # template variables
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping clauses
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if word.lower() in PROMQL_KEYWORDS or after.startswith("("):
            continue
        names.add(word)
    return names


GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}


def substitute_variables(expr: str) -> str:
    """A dashboard query with its template variables replaced as "All" would."""
    for variable, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", ".*", expr)


def panel_queries() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(dashboard file, panel, expr) for every query of every dashboard panel."""
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                yield name, panel, target["expr"]
